//! The machine a report ran on — CPU model, cores, kernel, memory — read from `/proc`, which
//! is what `uname` and `lscpu` read too; anything unreadable is reported as `unknown`.

use std::fs;

/// What the report says about the machine.
#[derive(Clone, Debug)]
pub struct Machine {
    /// The CPU model, from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Logical CPUs listed in `/proc/cpuinfo`.
    pub cpus_listed: Option<usize>,
    /// CPUs this process may run on (what the benchmarks get).
    pub cores_available: usize,
    /// Kernel name and release (`uname -sr`) and the architecture.
    pub kernel: String,
    /// Total memory, from `/proc/meminfo`.
    pub memory: String,
}

impl Machine {
    /// Reads the machine's description.
    #[must_use]
    pub fn read() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".to_owned()),
            cpus_listed: cpus_listed(&cpuinfo),
            cores_available: std::thread::available_parallelism().map_or(1, usize::from),
            kernel: kernel(),
            memory: memory(&meminfo).unwrap_or_else(|| "unknown".to_owned()),
        }
    }
}

/// The first CPU model line: `model name` on x86, `Hardware`/`cpu model`/`Model` elsewhere.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "cpu model", "Hardware", "Model"].into_iter().find_map(|key| {
        cpuinfo.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == key && !value.trim().is_empty()).then(|| value.trim().to_owned())
        })
    })
}

fn cpus_listed(cpuinfo: &str) -> Option<usize> {
    let count = cpuinfo
        .lines()
        .filter(|line| line.split_once(':').is_some_and(|(name, _)| name.trim() == "processor"))
        .count();
    (count > 0).then_some(count)
}

/// `uname -sr` from `/proc/sys/kernel`, with the architecture this binary was built for.
fn kernel() -> String {
    let read = |name: &str| fs::read_to_string(format!("/proc/sys/kernel/{name}")).ok();
    let kind = read("ostype").map_or_else(|| std::env::consts::OS.to_owned(), trimmed);
    let release = read("osrelease").map_or_else(|| "unknown release".to_owned(), trimmed);
    format!("{kind} {release} ({})", std::env::consts::ARCH)
}

fn trimmed(text: String) -> String {
    text.trim().to_owned()
}

fn memory(meminfo: &str) -> Option<String> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.1} GiB", kib as f64 / (1u64 << 20) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_and_count_come_from_cpuinfo() {
        // Goal: the x86 layout gives the model name and one entry per logical CPU.
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\n\
                       processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpus_listed(cpuinfo), Some(2));
        assert_eq!(cpu_model("processor : 0\n"), None);
    }

    #[test]
    fn memory_is_read_in_gibibytes() {
        // Goal: MemTotal's kB figure is shown in GiB.
        assert_eq!(memory("MemTotal:        8388608 kB\n").as_deref(), Some("8.0 GiB"));
        assert_eq!(memory(""), None);
    }
}
