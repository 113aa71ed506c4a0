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
