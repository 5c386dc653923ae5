//! The pre-flight memory plan of a quantization run: printed before the run starts and kept in
//! its report, and checked against the memory the machine has available, so a run that cannot
//! fit is refused with the amount it needs instead of failing half-way.

use gstick_ptq::memory::CalibrationMemory;
use serde::Serialize;

/// Bytes a run is expected to hold, by phase. The process's own memory and the memory-mapped
/// source are held throughout; the phases follow each other, so the peak is the largest.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryPlan {
    /// The process before the run (code, allocator, tokenizer, configuration).
    pub baseline: usize,
    /// The source file, memory mapped: every tensor is read once over the run.
    pub source_file: usize,
    /// Calibration and quantization, by component.
    pub calibration: CalibrationMemory,
    /// Writing the export: the quantized model and one float tensor at a time.
    pub export: usize,
    /// The before/after evaluation, when asked: the float model one layer at a time, then the
    /// exported model loaded on the kernels.
    pub evaluation: Option<usize>,
    pub peak: usize,
    /// What the machine has available now (`MemAvailable`), when it can be read.
    pub available: Option<usize>,
}

impl MemoryPlan {
    pub fn new(
        baseline: usize,
        source_file: usize,
        calibration: CalibrationMemory,
        export: usize,
        evaluation: Option<usize>,
    ) -> MemoryPlan {
        let phases = calibration.peak().max(export).max(evaluation.unwrap_or(0));
        MemoryPlan {
            baseline,
            source_file,
            calibration,
            export,
            evaluation,
            peak: baseline + source_file + phases,
            available: available_bytes(),
        }
    }

    /// Whether the plan fits in the available memory (true when that cannot be read).
    pub fn fits(&self) -> bool {
        self.available.is_none_or(|a| self.peak <= a)
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        let mib = |b: usize| b as f64 / 1048576.0;
        let available = self
            .available
            .map_or(String::new(), |a| format!(", {:.0} MiB available", mib(a)));
        format!(
            "memory plan: peak about {:.0} MiB (calibration {:.0}, export {:.0}{}, source file {:.0}, process {:.0}){available}",
            mib(self.peak),
            mib(self.calibration.peak()),
            mib(self.export),
            self.evaluation
                .map_or(String::new(), |e| format!(", evaluation {:.0}", mib(e))),
            mib(self.source_file),
            mib(self.baseline),
        )
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn available_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The resident set of this process now (`/proc/self/statm`), in bytes.
pub fn resident_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The peak resident set of this process so far (`VmHWM`), in bytes.
pub fn peak_resident_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
