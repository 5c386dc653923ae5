//! The library API of post-training quantization: a recipe, calibrated on a source model,
//! run layer by layer, saved in a format other tools load.
//!
//! A whole run on a tiny synthetic model (two decoder layers, written to a temporary
//! directory): GPTQ at 4 bits in groups of 32, saved as a Golden Stick directory, loaded back
//! onto the integer kernels.
//!
//! ```
//! use gstick::ptq::config::{PtqConfig, WeightAlgo};
//! use gstick::{Calibration, Format, Quantizer, Source};
//!
//! # fn main() -> Result<(), gstick::Error> {
//! let dir = std::env::temp_dir().join(format!("gstick-doc-{}", std::process::id()));
//! gstick::models::synthetic::write_tiny_llama(&dir.join("float"), 0)?;
//! let source = Source::open(&dir.join("float"))?;
//! let text = "Golden Stick quantizes models layer by layer. ".repeat(40);
//! let calib = Calibration::from_text(&source, &text, 4, 64, 0)?;
//!
//! let config = PtqConfig::weight_only(WeightAlgo::Gptq, 4, 32)?;
//! let quantized = Quantizer::new(config)?.calibrate(&source, &calib).run()?;
//! assert_eq!(quantized.model.linears.len(), 2 * 7);
//!
//! quantized.save(Format::Gs, &dir.join("w4"))?;
//! let lm = gstick::load(&dir.join("w4"))?;
//! assert_eq!(lm.deploy.map(|d| d.layers), Some(14));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```

use std::path::Path;

use gstick_export::{ExportReport, Format};
use gstick_ptq::memory::calibration_memory;
use gstick_ptq::pipeline::{quantize_layers, PipelineOptions};
use gstick_ptq::steps::{GptqStep, PruneStep, PtqStep};
use gstick_ptq::supported::check_recipe;
use gstick_ptq::{LayerRecord, Recipe};
use gstick_quant::QuantizedModel;

use crate::memory::{resident_bytes, MemoryPlan};
use crate::{Calibration, Error, Result, Source};

/// A recipe ready to run: what is not implemented was refused when it was made.
pub struct Quantizer {
    recipe: Recipe,
    options: PipelineOptions,
}

impl Quantizer {
    /// Refuses, naming the field, a recipe that asks for what is not implemented.
    pub fn new(recipe: impl Into<Recipe>) -> Result<Quantizer> {
        let recipe = recipe.into();
        check_recipe(&recipe)?;
        Ok(Quantizer {
            recipe,
            options: PipelineOptions::default(),
        })
    }

    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// Settings of the pipeline itself (float inputs for each layer, rows kept per observer).
    pub fn with_options(mut self, options: PipelineOptions) -> Quantizer {
        self.options = options;
        self
    }

    /// Binds the recipe to a source model and its calibration windows.
    pub fn calibrate<'s>(self, source: &'s Source, calibration: &Calibration) -> Calibrated<'s> {
        Calibrated {
            quantizer: self,
            source,
            windows: calibration.windows.clone(),
            eval: None,
            on_layer: None,
        }
    }
}

/// What a run calls after each decoder layer (progress).
type OnLayer<'s> = Box<dyn FnMut(&LayerRecord) + 's>;

/// A recipe, a source and calibration windows: everything a run needs.
pub struct Calibrated<'s> {
    quantizer: Quantizer,
    source: &'s Source,
    windows: Vec<Vec<u32>>,
    eval: Option<(usize, usize)>,
    on_layer: Option<OnLayer<'s>>,
}

impl<'s> Calibrated<'s> {
    /// Called after each decoder layer (progress).
    pub fn on_layer(mut self, f: impl FnMut(&LayerRecord) + 's) -> Self {
        self.on_layer = Some(Box::new(f));
        self
    }

    /// Makes the memory plan include a before/after evaluation on `windows` windows of
    /// `seqlen` tokens (the caller runs it).
    pub fn with_evaluation(mut self, windows: usize, seqlen: usize) -> Self {
        self.eval = Some((windows, seqlen));
        self
    }

    /// The pre-flight memory plan of this run.
    pub fn memory_plan(&self) -> MemoryPlan {
        let c = &self.source.config;
        let seqlen = self.windows.iter().map(|w| w.len()).max().unwrap_or(0);
        let configs = || self.quantizer.recipe.configs().map(|(_, p)| p);
        let hessian = configs().any(|p| GptqStep.applies_to(p) || PruneStep.applies_to(p));
        let block = configs()
            .filter(|p| p.weight_scheme().is_some())
            .map(|p| {
                if p.group_size > 0 {
                    p.group_size
                } else {
                    c.hidden
                }
            })
            .min()
            .unwrap_or(c.hidden);
        let mut calibration = calibration_memory(
            c,
            self.windows.len(),
            seqlen,
            hessian,
            self.quantizer.options.sample_rows,
            block,
        );
        // Pruned weights kept in f32 take four bytes each, not one.
        if configs().any(|p| p.prune.is_on() && p.weight_scheme().is_none()) {
            calibration.quantized_model = calibration.quantized_model.saturating_mul(4);
        }
        // Export: the quantized model is held while the largest float tensor (the embedding)
        // is read and turned into bytes.
        let export = calibration.quantized_model + 2 * 4 * c.vocab * c.hidden;
        let evaluation = self.eval.map(|(windows, seqlen)| {
            let float = calibration_memory(c, windows, seqlen, false, 0, block);
            // The exported model on the kernels (about half a byte to a byte per weight, plus
            // the float embedding) and one window's logits in blocks of 64 positions.
            let on_kernels = calibration.quantized_model + 4 * c.vocab * c.hidden;
            let logits = 3 * 4 * 64 * c.vocab;
            (float.embedding + float.activations + float.window_forward + float.layer_weights)
                .max(on_kernels + float.activations / 2 + float.window_forward + logits)
        });
        MemoryPlan::new(
            resident_bytes().unwrap_or(0),
            self.source.file_bytes() as usize,
            calibration,
            export,
            evaluation,
        )
    }

    /// The memory plan, or the refusal of a run that would not fit in the available memory.
    pub fn preflight(&self) -> Result<MemoryPlan> {
        let plan = self.memory_plan();
        if !plan.fits() {
            return Err(Error::Ptq(gstick_ptq::Error::Memory(format!(
                "this run needs about {:.0} MiB and {:.0} MiB are available; use fewer or shorter calibration windows ({})",
                plan.peak as f64 / 1048576.0,
                plan.available.unwrap_or(0) as f64 / 1048576.0,
                plan.describe()
            ))));
        }
        Ok(plan)
    }

    /// Runs the pipeline. Refuses a run whose memory plan exceeds the available memory, and
    /// one without calibration windows when a step learns from data (GPTQ, AWQ).
    pub fn run(mut self) -> Result<Quantized<'s>> {
        if self.windows.is_empty() {
            if self.quantizer.recipe.needs_calibration() {
                return Err(Error::Input {
                    path: self.source.path().display().to_string(),
                    message: "GPTQ, AWQ, SmoothQuant, OSL and static activation or KV-cache scales learn from calibration data: give calibration windows"
                        .into(),
                });
            }
            self.windows = Calibration::probe(self.source)?.windows;
        }
        let plan = self.preflight()?;
        let mut lm = self.source.layerwise()?;
        let inputs = lm.embed(&self.windows)?;
        let mut on_layer = self.on_layer.take();
        let result = quantize_layers(
            &mut lm,
            inputs,
            &self.quantizer.recipe,
            &self.quantizer.options,
            &mut |record| {
                if let Some(f) = on_layer.as_mut() {
                    f(record)
                }
            },
        )?;
        Ok(Quantized {
            model: result.model,
            layers: result.layers,
            plan,
            source: self.source,
        })
    }
}

/// The product of a run: the quantized model, what happened to each layer, and the memory
/// plan it ran under.
pub struct Quantized<'s> {
    pub model: QuantizedModel,
    pub layers: Vec<LayerRecord>,
    pub plan: MemoryPlan,
    source: &'s Source,
}

impl Quantized<'_> {
    /// Writes the model in `format` to the new directory `out` (an existing path is refused),
    /// reading the float tensors from the source one at a time.
    pub fn save(&self, format: Format, out: &Path) -> Result<ExportReport> {
        let mut weights = self.source.weights()?;
        let mut source = gstick_export::Source {
            config: &self.source.config,
            tokenizer: &self.source.tokenizer,
            weights: &mut weights,
            gguf: self.source.gguf(),
        };
        Ok(gstick_export::save(&self.model, &mut source, format, out)?)
    }

    /// The per-Linear summary table.
    pub fn summary_table(&self) -> String {
        gstick_ptq::summary_table(&self.layers)
    }
}
