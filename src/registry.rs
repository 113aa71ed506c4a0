//! The generated kernel registry (`csrc/kernels.list` → [`KernelId`]).

include!(concat!(env!("OUT_DIR"), "/registry.rs"));

impl KernelId {
    /// Looks a kernel up by its name.
    ///
    /// ```
    /// use mllm_kernel::registry::KernelId;
    /// assert_eq!(KernelId::from_name("rms_norm").unwrap(), KernelId::RmsNorm);
    /// assert!(KernelId::from_name("nope").is_err());
    /// ```
    pub fn from_name(name: &str) -> crate::Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.name() == name)
            .ok_or_else(|| crate::Error::UnknownKernel {
                name: name.to_string(),
                known: Self::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
            })
    }
}

/// One compilable unit: a kernel, specialized to one of its variants where
/// it declares any (`rms_norm[bf16]`), else the whole kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelBuild {
    pub id: KernelId,
    pub variant: Option<&'static str>,
}

impl KernelBuild {
    /// The build of `id` for `variant`, which must be one it declares.
    pub fn new(id: KernelId, variant: Option<&str>) -> crate::Result<Self> {
        let known = id.variants();
        let variant = match variant {
            None if known.is_empty() => None,
            Some(v) => Some(
                *known
                    .iter()
                    .find(|k| **k == v)
                    .ok_or_else(|| crate::Error::UnknownKernel {
                        name: format!("{}[{v}]", id.name()),
                        known: Self::all().iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
                    })?,
            ),
            None => {
                return Err(crate::Error::UnknownKernel {
                    name: id.name().to_string(),
                    known: format!("one variant of {}: {}", id.name(), known.join(", ")),
                })
            }
        };
        Ok(Self { id, variant })
    }

    /// Every build of `id`: one per variant, or the kernel itself.
    pub fn of(id: KernelId) -> Vec<Self> {
        match id.variants() {
            [] => vec![Self { id, variant: None }],
            vs => vs.iter().map(|v| Self { id, variant: Some(*v) }).collect(),
        }
    }

    /// Whether this build has code for `arch`. The CUTLASS 3.x half of
    /// `int8_scaled_mm` is wgmma/TMA code that exists only for sm_90a.
    ///
    /// ```
    /// use mllm_kernel::registry::KernelBuild;
    /// let sm90 = &KernelBuild::parse("int8_scaled_mm[sm90]").unwrap()[0];
    /// assert!(sm90.targets("sm_90a".parse().unwrap()));
    /// assert!(!sm90.targets("sm_80".parse().unwrap()));
    /// ```
    pub fn targets(&self, arch: crate::jit::Arch) -> bool {
        match (self.id, self.variant) {
            (KernelId::Int8ScaledMm, Some("sm90")) => arch.major == 9 && arch.minor == 0 && arch.arch_specific,
            _ => true,
        }
    }

    /// Whether `mllm-kernel check` compiles this build for `arch` when it
    /// checks the whole kernel. The four `attention` variants are one source
    /// instantiated for another (head dim, dtype); compiling one per arch
    /// (d64 f16 for sm_80, d128 bf16 for sm_90a) still compiles every source
    /// line and every head dim and dtype, at a quarter of the CI time. A build
    /// named explicitly (`attention[d64_bf16]`) and `cache rebuild` are not
    /// affected.
    ///
    /// ```
    /// use mllm_kernel::registry::KernelBuild;
    /// let sm90 = "sm_90a".parse().unwrap();
    /// let all = KernelBuild::parse("attention").unwrap();
    /// let checked: Vec<String> = all.iter().filter(|b| b.checked_on(sm90)).map(|b| b.to_string()).collect();
    /// assert_eq!(checked, ["attention[d128_bf16]"]);
    /// ```
    pub fn checked_on(&self, arch: crate::jit::Arch) -> bool {
        match (self.id, self.variant) {
            (KernelId::Attention, Some(v)) => v == if arch.major >= 9 { "d128_bf16" } else { "d64_f16" },
            _ => self.targets(arch),
        }
    }

    /// Every build of every registered kernel.
    pub fn all() -> Vec<Self> {
        KernelId::ALL.iter().flat_map(|id| Self::of(*id)).collect()
    }

    /// Parses `rms_norm[bf16]` (one build) or `rms_norm` (all its builds).
    ///
    /// ```
    /// use mllm_kernel::registry::KernelBuild;
    /// assert_eq!(KernelBuild::parse("rms_norm[bf16]").unwrap().len(), 1);
    /// assert_eq!(KernelBuild::parse("rms_norm").unwrap().len(), 3);
    /// assert!(KernelBuild::parse("rms_norm[int4]").is_err());
    /// ```
    pub fn parse(text: &str) -> crate::Result<Vec<Self>> {
        match text.strip_suffix(']').and_then(|t| t.split_once('[')) {
            Some((name, variant)) => Ok(vec![Self::new(KernelId::from_name(name)?, Some(variant))?]),
            None => Ok(Self::of(KernelId::from_name(text)?)),
        }
    }
}

impl std::fmt::Display for KernelBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.variant {
            Some(v) => write!(f, "{}[{v}]", self.id.name()),
            None => f.write_str(self.id.name()),
        }
    }
}
