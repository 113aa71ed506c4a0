//! Build script: turns `csrc/kernels.list` into the `KernelId` registry,
//! embeds every `csrc/` source for the JIT, binds `mllm_kernel.h` with
//! bindgen, and under the `aot` feature compiles every kernel with nvcc for
//! `MLLM_CUDA_ARCHS`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

struct KernelDef {
    name: String,
    compiler: String,
    entry: String,
    needs: Vec<String>,
    variants: Vec<String>,
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let csrc = root.join("csrc");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    for var in [
        "MLLM_CUDA_ARCHS",
        "CUDA_HOME",
        "NVCC",
        "CUTLASS_HOME",
        "FLASHINFER_HOME",
        "MLLM_AOT_ATTENTION_VARIANTS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let kernels = read_kernel_list(&csrc.join("kernels.list"));
    let mut files = Vec::new();
    collect_sources(&csrc, &csrc, &mut files);
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", csrc.join(f).display());
    }

    let mut code = registry_code(&kernels, &csrc, &files);
    bind_header(&csrc.join("include/mllm_kernel.h"), &out);
    if env::var_os("CARGO_FEATURE_AOT").is_some() {
        code.push_str(&aot::build(&root, &out, &kernels));
    }
    fs::write(out.join("registry.rs"), code).unwrap();
}

fn read_kernel_list(path: &Path) -> Vec<KernelDef> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert!(cols.len() == 5, "kernels.list: expected 5 columns in `{l}`");
            assert!(
                matches!(cols[1], "nvrtc" | "nvcc"),
                "kernels.list: compiler must be nvrtc or nvcc in `{l}`"
            );
            KernelDef {
                name: cols[0].into(),
                compiler: cols[1].into(),
                entry: cols[2].into(),
                needs: cols[3].split(',').filter(|s| *s != "-").map(String::from).collect(),
                variants: cols[4].split(',').filter(|s| *s != "-").map(String::from).collect(),
            }
        })
        .collect()
}

fn collect_sources(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_sources(base, &p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("cu" | "cuh" | "h" | "hpp")) {
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

fn camel(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn registry_code(kernels: &[KernelDef], csrc: &Path, files: &[String]) -> String {
    let mut s = String::new();
    s.push_str("/// Kernels shipped in `csrc/` (generated from `csrc/kernels.list`).\n");
    s.push_str("#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]\npub enum KernelId {\n");
    for k in kernels {
        writeln!(s, "    /// `{}` ({}): `csrc/{}`", k.name, k.compiler, k.entry).unwrap();
        writeln!(s, "    {},", camel(&k.name)).unwrap();
    }
    s.push_str("}\n\nimpl KernelId {\n    /// Every registered kernel.\n    pub const ALL: &'static [KernelId] = &[");
    for k in kernels {
        write!(s, "KernelId::{}, ", camel(&k.name)).unwrap();
    }
    s.push_str("];\n\n    /// The kernel's name (cache directory, CLI argument).\n    pub fn name(self) -> &'static str {\n        match self {\n");
    for k in kernels {
        writeln!(s, "            KernelId::{} => {:?},", camel(&k.name), k.name).unwrap();
    }
    s.push_str("        }\n    }\n\n    /// Which compiler builds it.\n    pub fn compiler(self) -> crate::jit::Compiler {\n        match self {\n");
    for k in kernels {
        let c = if k.compiler == "nvrtc" { "Nvrtc" } else { "Nvcc" };
        writeln!(
            s,
            "            KernelId::{} => crate::jit::Compiler::{c},",
            camel(&k.name)
        )
        .unwrap();
    }
    s.push_str("        }\n    }\n\n    /// Its translation unit under `csrc/`.\n    pub fn entry(self) -> &'static str {\n        match self {\n");
    for k in kernels {
        writeln!(s, "            KernelId::{} => {:?},", camel(&k.name), k.entry).unwrap();
    }
    s.push_str("        }\n    }\n\n    /// Specializations the JIT builds separately (empty: one build).\n    pub fn variants(self) -> &'static [&'static str] {\n        match self {\n");
    for k in kernels {
        writeln!(s, "            KernelId::{} => &{:?},", camel(&k.name), k.variants).unwrap();
    }
    s.push_str("        }\n    }\n\n    /// Third-party headers it needs.\n    pub fn third_party(self) -> &'static [crate::jit::ThirdParty] {\n        match self {\n");
    for k in kernels {
        let needs: Vec<String> = k
            .needs
            .iter()
            .map(|n| match n.as_str() {
                "cutlass" => "crate::jit::ThirdParty::Cutlass".to_string(),
                "flashinfer" => "crate::jit::ThirdParty::FlashInfer".to_string(),
                other => panic!("kernels.list: unknown third-party `{other}`"),
            })
            .collect();
        writeln!(
            s,
            "            KernelId::{} => &[{}],",
            camel(&k.name),
            needs.join(", ")
        )
        .unwrap();
    }
    s.push_str("        }\n    }\n}\n\n/// Every source under `csrc/`, embedded so a binary can JIT anywhere.\npub static CSRC_FILES: &[(&str, &str)] = &[\n");
    for f in files {
        writeln!(
            s,
            "    ({f:?}, include_str!({:?})),",
            csrc.join(f).display().to_string()
        )
        .unwrap();
    }
    s.push_str("];\n");
    s
}

/// Two bindings of the C ABI: a libloading struct for JIT-built shared
/// objects, and extern declarations for the statically linked AOT library.
fn bind_header(header: &Path, out: &Path) {
    let base = || {
        bindgen::Builder::default()
            .header(header.to_string_lossy())
            .allowlist_function("mllm_.*")
            .allowlist_type("mllm_.*")
            .rustified_enum("mllm_dtype_t")
            .newtype_enum("mllm_status_t")
            .newtype_enum("mllm_int8_mm_config_t")
            .newtype_enum("mllm_decode_kernel_t")
            .layout_tests(false)
            .derive_debug(true)
            // Edition 2024: unsafe calls inside the generated `unsafe fn`s need their own blocks.
            .wrap_unsafe_ops(true)
    };
    let dynamic = base()
        .dynamic_library_name("MllmKernelLib")
        .dynamic_link_require_all(false)
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen failed on {} (is libclang installed? run scripts/setup.sh): {e}",
                header.display()
            )
        });
    dynamic.write_to_file(out.join("ffi_dynamic.rs")).unwrap();
    // Types come from `dynamic`, so both paths share one set.
    let linked = base()
        .blocklist_type("mllm_.*")
        .raw_line("use super::dynamic::*;")
        .generate()
        .unwrap();
    linked.write_to_file(out.join("ffi_linked.rs")).unwrap();
}

mod aot {
    use super::*;

    /// Finds nvcc the same way the runtime does (minus PATH caching).
    fn nvcc(root: &Path) -> PathBuf {
        let candidates = [
            env::var_os("NVCC").map(PathBuf::from),
            env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")),
            Some(root.join(".toolchain/cuda/nvidia/cu13/bin/nvcc")),
            env::var_os("PATH").and_then(|p| env::split_paths(&p).map(|d| d.join("nvcc")).find(|p| p.is_file())),
            Some(PathBuf::from("/usr/local/cuda/bin/nvcc")),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "the `aot` feature compiles CUDA kernels and needs nvcc (CUDA 13.0), which was not found in \
                 NVCC, CUDA_HOME, .toolchain/ or PATH. Run `bash scripts/setup.sh` (installs the pinned nvcc \
                 from PyPI into .toolchain/) or set CUDA_HOME."
                )
            })
    }

    fn archs() -> Vec<(String, bool)> {
        let list = env::var("MLLM_CUDA_ARCHS").unwrap_or_else(|_| "80;90a".into());
        list.split([';', ',', ' '])
            .filter(|s| !s.is_empty())
            .map(|a| {
                let a = a.trim().trim_start_matches("sm_").replace('.', "");
                let specific = a.ends_with('a');
                let digits = a.trim_end_matches('a').to_string();
                assert!(
                    digits.len() >= 2 && digits.chars().all(|c| c.is_ascii_digit()),
                    "MLLM_CUDA_ARCHS: bad arch `{a}`"
                );
                (digits, specific)
            })
            .collect()
    }

    /// `nvcc -cubin` for each (source, arch, output) of the NVRTC kernels, as many
    /// at a time as cargo gives the build script jobs.
    fn compile_cubins(nvcc: &Path, include: &Path, cubins: &[(PathBuf, String, PathBuf)]) {
        let jobs: usize = env::var("NUM_JOBS")
            .ok()
            .and_then(|j| j.parse().ok())
            .unwrap_or(1)
            .max(1);
        let mut running = std::collections::VecDeque::new();
        for (entry, arch, cubin) in cubins {
            if running.len() == jobs {
                wait_nvcc(running.pop_front().unwrap());
            }
            let child = Command::new(nvcc)
                .args([
                    "-cubin",
                    &format!("-arch={arch}"),
                    "-std=c++17",
                    "-lineinfo",
                    "-DNDEBUG",
                ])
                .arg(format!("-I{}", include.display()))
                .arg("-o")
                .arg(cubin)
                .arg(entry)
                .spawn()
                .expect("run nvcc");
            running.push_back((child, entry, arch));
        }
        running.into_iter().for_each(wait_nvcc);
    }

    fn wait_nvcc((mut child, entry, arch): (std::process::Child, &PathBuf, &String)) {
        let status = child.wait().expect("wait for nvcc");
        assert!(status.success(), "nvcc failed on {} for {arch}", entry.display());
    }

    fn gencode(digits: &str, specific: bool) -> String {
        let suffix = if specific { "a" } else { "" };
        let ptx = if specific {
            String::new()
        } else {
            format!(",compute_{digits}")
        };
        format!("-gencode=arch=compute_{digits}{suffix},code=[sm_{digits}{suffix}{ptx}]")
    }

    /// nvcc kernels whose variants export distinct entry points (`int8_scaled_mm`: `_sm80` /
    /// `_sm90`): each variant in kernels.list compiles as its own object, at the same time
    /// as the others, where one translation unit would run the CUTLASS 2.x and 3.x GEMMs
    /// back to back. (`attention`'s variants share its plan/run entry points: one object.)
    const AOT_OBJECT_PER_VARIANT: &[&str] = &["int8_scaled_mm"];

    /// (kernel, variant, arch): a variant with code for that one arch only, built as stubs
    /// when MLLM_CUDA_ARCHS lacks it (see `variant_unit`).
    const AOT_VARIANT_ONLY_ON: &[(&str, &str, &str)] = &[("int8_scaled_mm", "sm90", "90a")];

    /// A generated source that compiles `entry` as variant `variant` alone, as the JIT
    /// does (`-DMLLM_VARIANT -DMLLM_VARIANT_<V>`); quoted includes still resolve beside
    /// `entry`. `stub`: the variant's arch is not built, so it compiles only entry points
    /// that return an error (`MLLM_VARIANT_STUB`). The loader links the AOT library only on
    /// the archs it was built for, so they never run; the CUTLASS 3.x host code they
    /// replace took 105 s of CPU in an sm_80-only build.
    fn variant_unit(out: &Path, entry: &Path, name: &str, variant: &str, stub: bool) -> PathBuf {
        let unit = out.join(format!("{name}.{variant}.cu"));
        let text = format!(
            "// Generated by build.rs: {name}[{variant}] as its own AOT object.\n\
             #define MLLM_VARIANT\n#define MLLM_VARIANT_{}\n{}#include {:?}\n",
            variant.to_uppercase(),
            if stub { "#define MLLM_VARIANT_STUB\n" } else { "" },
            entry.display().to_string()
        );
        fs::write(&unit, text).unwrap_or_else(|e| panic!("{}: {e}", unit.display()));
        unit
    }

    pub fn build(root: &Path, out: &Path, kernels: &[KernelDef]) -> String {
        let nvcc = nvcc(root);
        let cuda_home = nvcc.parent().and_then(Path::parent).unwrap().to_path_buf();
        let include = root.join("csrc/include");
        let cutlass = env::var_os("CUTLASS_HOME")
            .map(PathBuf::from)
            .unwrap_or(root.join("third_party/cutlass"));
        let flashinfer = env::var_os("FLASHINFER_HOME")
            .map(PathBuf::from)
            .unwrap_or(root.join("third_party/flashinfer"));
        let archs = archs();
        // "80", "90a": the arch names of AOT_VARIANT_ONLY_ON.
        let built: Vec<String> = archs
            .iter()
            .map(|(d, s)| format!("{d}{}", if *s { "a" } else { "" }))
            .collect();
        let mut code = String::from("\n/// Kernels compiled into this binary (`aot` feature).\npub static AOT_CUBINS: &[(KernelId, &str, &[u8])] = &[\n");
        let mut linked = Vec::new();
        // cc picks nvcc from NVCC (a direct compiler path would make it pass
        // gcc flags unwrapped); its default flags are gcc's, so drop them.
        // SAFETY: the build script is still single-threaded here (the compile threads
        // start below), so nothing reads the environment concurrently.
        unsafe { env::set_var("NVCC", &nvcc) };
        let mut lib = cc::Build::new();
        // warnings(false): cc's -Wall -Wextra reach the host compiler through nvcc and
        // filled ~58k lines of CI log about CUTLASS's headers; nvcc's own diagnostics stay on.
        lib.cuda(true)
            .no_default_flags(true)
            .warnings(false)
            .cudart("static")
            .include(&include)
            .flag("-std=c++17")
            .flag("-O3")
            .flag("-Xcompiler=-fPIC")
            .define("NDEBUG", None);
        let mut fi_lib = lib.clone();
        // MLLM_AOT_ATTENTION_VARIANTS=d128_bf16[,..] links only those FlashInfer variants
        // (CI: `mllm-kernel check` compiles every variant already; each one adds minutes).
        if let Ok(list) = env::var("MLLM_AOT_ATTENTION_VARIANTS") {
            fi_lib.define("MLLM_VARIANT", None);
            for v in list.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                fi_lib.define(&format!("MLLM_VARIANT_{}", v.to_uppercase()), None);
            }
        }
        let mut fi_files = 0;
        let mut cubins = Vec::new();
        for k in kernels {
            let entry = root.join("csrc").join(&k.entry);
            for (digits, specific) in &archs {
                if k.compiler != "nvrtc" {
                    continue;
                }
                let arch = format!("sm_{digits}{}", if *specific { "a" } else { "" });
                let cubin = out.join(format!("{}.{arch}.cubin", k.name));
                writeln!(
                    code,
                    "    (KernelId::{}, {arch:?}, include_bytes!({:?})),",
                    camel(&k.name),
                    cubin.display().to_string()
                )
                .unwrap();
                cubins.push((entry.clone(), arch, cubin));
            }
            if k.compiler == "nvcc" {
                let needs = |what: &str| k.needs.iter().any(|n| n == what);
                // FlashInfer brings its own CCCL, which must not shadow the toolkit's for the
                // other kernels: its sources go into a library of their own.
                let target = if needs("flashinfer") { &mut fi_lib } else { &mut lib };
                if AOT_OBJECT_PER_VARIANT.contains(&k.name.as_str()) {
                    for variant in &k.variants {
                        let stub = AOT_VARIANT_ONLY_ON
                            .iter()
                            .any(|(n, v, arch)| *n == k.name && v == variant && !built.iter().any(|b| b == arch));
                        target.file(variant_unit(out, &entry, &k.name, variant, stub));
                    }
                } else {
                    target.file(&entry);
                }
                if needs("cutlass") {
                    target
                        .include(cutlass.join("include"))
                        .include(cutlass.join("tools/util/include"))
                        .flag("--expt-relaxed-constexpr");
                }
                if needs("flashinfer") {
                    target
                        .include(flashinfer.join("include"))
                        .include(flashinfer.join("cccl/libcudacxx/include"))
                        .include(flashinfer.join("cccl/cub"))
                        .flag("--expt-relaxed-constexpr");
                    fi_files += 1;
                }
                linked.push(format!("KernelId::{}", camel(&k.name)));
            }
        }
        code.push_str("];\n");
        for (digits, specific) in &archs {
            lib.flag(gencode(digits, *specific));
            fi_lib.flag(gencode(digits, *specific));
        }
        // The CUTLASS GEMMs take minutes each: the cubins and both libraries compile at
        // once (cc's `parallel` feature spreads each library's files over cargo's jobs).
        std::thread::scope(|s| {
            s.spawn(|| compile_cubins(&nvcc, &include, &cubins));
            if fi_files > 0 {
                s.spawn(|| fi_lib.compile("mllm_kernel_aot_flashinfer"));
            }
            if !linked.is_empty() {
                lib.compile("mllm_kernel_aot");
            }
        });
        if !linked.is_empty() {
            for dir in ["lib64", "lib"] {
                println!("cargo:rustc-link-search=native={}", cuda_home.join(dir).display());
            }
            println!("cargo:rustc-link-lib=static=cudart_static");
            for l in ["stdc++", "dl", "rt", "pthread"] {
                println!("cargo:rustc-link-lib=dylib={l}");
            }
        }
        let arch_list: Vec<String> = built.iter().map(|b| format!("{:?}", format!("sm_{b}"))).collect();
        writeln!(
            code,
            "/// Archs the AOT kernels were built for.\npub static AOT_ARCHS: &[&str] = &[{}];",
            arch_list.join(", ")
        )
        .unwrap();
        writeln!(
            code,
            "/// nvcc kernels linked statically.\npub static AOT_LINKED: &[KernelId] = &[{}];",
            linked.join(", ")
        )
        .unwrap();
        code
    }
}
