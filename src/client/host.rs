//! Facts read from the host once at start: kernel, OS, CPU, memory, for node attributes.

use std::collections::BTreeMap;

/// Size of the root filesystem, in MB (read once at start for node resources).
pub fn host_disk_mb() -> u64 {
    crate::sys::host::fs_space(std::path::Path::new("/"))
        .map_or(0, |(total, _)| total / (1024 * 1024))
}

/// What the node reports about the machine it runs on.
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub kernel_name: String,
    pub kernel_version: String,
    pub os_name: String,
    pub os_version: String,
    /// Go's name for the architecture (`amd64`, `arm64`, `arm`, ...).
    pub arch: String,
    pub cpu_cores: usize,
    pub cpu_mhz: u64,
    pub cpu_model: String,
    pub memory_bytes: u64,
    /// Size of the root filesystem, in MB.
    pub disk_mb: u64,
    pub hostname: String,
}

/// What uname(2) says of the kernel and machine.
struct Uname {
    /// sysname, lowercased.
    kernel_name: String,
    /// release.
    kernel_version: String,
    machine: String,
}

/// uname(2), with Linux defaults if it fails.
fn uname() -> Uname {
    match crate::sys::host::uname() {
        Ok([machine, _, release, sysname, _]) => Uname {
            kernel_name: sysname.to_lowercase(),
            kernel_version: release,
            machine,
        },
        Err(_) => Uname {
            kernel_name: "linux".into(),
            kernel_version: String::new(),
            machine: std::env::consts::ARCH.into(),
        },
    }
}

fn go_arch(machine: &str) -> String {
    match machine {
        "x86_64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "i386" | "i686" => "386",
        m if m.starts_with("armv") => "arm",
        m => m,
    }
    .to_string()
}

fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let mut id = String::new();
    let mut version = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("ID=") {
            id = v.trim_matches('"').to_string();
        } else if let Some(v) = line.strip_prefix("VERSION_ID=") {
            version = v.trim_matches('"').to_string();
        }
    }
    (id, version)
}

fn cpu_info() -> (u64, String) {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut mhz = 0f64;
    let mut model = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "cpu MHz" if mhz == 0.0 => mhz = v.trim().parse().unwrap_or(0.0),
            "model name" if model.is_empty() => model = v.trim().to_string(),
            _ => {}
        }
    }
    if mhz == 0.0 {
        if let Ok(s) =
            std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        {
            mhz = s.trim().parse::<f64>().unwrap_or(0.0) / 1000.0;
        }
    }
    if mhz == 0.0 {
        mhz = 1000.0;
    }
    (mhz as u64, model)
}

/// Total memory from /proc/meminfo, in bytes.
pub fn memory_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

impl HostFacts {
    pub fn read() -> HostFacts {
        let Uname {
            kernel_name,
            kernel_version,
            machine,
        } = uname();
        let (os_name, os_version) = os_release();
        let (cpu_mhz, cpu_model) = cpu_info();
        HostFacts {
            kernel_name,
            kernel_version,
            os_name,
            os_version,
            arch: go_arch(&machine),
            cpu_cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_mhz,
            cpu_model,
            memory_bytes: memory_total_bytes(),
            disk_mb: host_disk_mb(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }

    /// Nomad's node attributes for these facts.
    pub fn attributes(
        &self,
        raw_exec: bool,
        advertise: &str,
        version: &str,
    ) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            a.insert(k.to_string(), v);
        };
        put("kernel.name", self.kernel_name.clone());
        put("kernel.version", self.kernel_version.clone());
        put("kernel.arch", self.arch.clone());
        put("os.name", self.os_name.clone());
        put("os.version", self.os_version.clone());
        put("cpu.arch", self.arch.clone());
        put("cpu.numcores", self.cpu_cores.to_string());
        put("cpu.reservablecores", self.cpu_cores.to_string());
        put("cpu.frequency", self.cpu_mhz.to_string());
        put(
            "cpu.totalcompute",
            (self.cpu_mhz * self.cpu_cores as u64).to_string(),
        );
        put("cpu.modelname", self.cpu_model.clone());
        put("memory.totalbytes", self.memory_bytes.to_string());
        put("unique.hostname", self.hostname.clone());
        put("nomad.version", version.to_string());
        put("nomad.advertise.address", advertise.to_string());
        put("os.signals", "SIGABRT,SIGALRM,SIGBUS,SIGCHLD,SIGCONT,SIGFPE,SIGHUP,SIGILL,SIGINT,SIGIO,SIGIOT,SIGKILL,SIGPIPE,SIGPROF,SIGQUIT,SIGSEGV,SIGSTOP,SIGSYS,SIGTERM,SIGTRAP,SIGTSTP,SIGTTIN,SIGTTOU,SIGURG,SIGUSR1,SIGUSR2,SIGVTALRM,SIGWINCH,SIGXCPU,SIGXFSZ".to_string());
        if raw_exec {
            put("driver.raw_exec", "1".to_string());
        }
        a
    }
}
