//! The CPU every benchmark names beside its figures: int8 speed, and under AVX2 int8 results,
//! depend on it. Shared by every bench (each includes this file as a module).

/// The flags int8 kernels choose by: AVX2 (u8 x s8, which can clip), AVX-512, VNNI, AMX.
pub const INT8_FLAGS: [&str; 7] =
    ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"];

/// "model name (family F, model M), N CPUs; avx2 yes, ..., amx_int8 no", from /proc/cpuinfo.
pub fn describe() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map_or(String::new(), |(_, v)| v.trim().to_owned())
    };
    let flags = field("flags");
    let have: Vec<&str> = flags.split_whitespace().collect();
    let marks: Vec<String> =
        INT8_FLAGS.iter().map(|f| format!("{f} {}", if have.contains(f) { "yes" } else { "no" })).collect();
    format!(
        "{} (family {}, model {}), {} CPUs; {}",
        field("model name"),
        field("cpu family"),
        field("model"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        marks.join(", ")
    )
}
