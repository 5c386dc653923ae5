//! What this build implements. A configuration the original accepts but Golden Stick does not
//! implement yet is refused before any work starts, with an error that names the field: a tool
//! that silently produces a different kind of model than asked (say weight-only W8A16 for a
//! SmoothQuant A8W8 recipe) is worse than one that says no.

use crate::config::{OutliersSuppression, PtqConfig, PtqMode, QuantDtype};
use crate::recipe::Recipe;
use crate::ConfigError;

fn not_implemented(field: &'static str, value: impl Into<String>, message: &str) -> ConfigError {
    ConfigError::NotImplemented {
        field,
        value: value.into(),
        message: message.into(),
    }
}

/// Refuses what the layer-wise pipeline cannot do yet, or what the original refuses in quantize
/// mode: SmoothQuant without activation quantization, OutlierSuppression+, A8W4 without
/// act-order, deploy mode, and configurations that quantize nothing.
pub fn check(config: &PtqConfig) -> Result<(), ConfigError> {
    config.validate()?;
    match config.outliers_suppression {
        OutliersSuppression::None | OutliersSuppression::Awq => {}
        // SmoothQuant is built for A8W8, static or dynamic.
        OutliersSuppression::Smooth if config.act_quant_dtype.is_some() => {}
        OutliersSuppression::Smooth => {
            return Err(not_implemented(
                "outliers_suppression",
                "smooth",
                "SmoothQuant without activation quantization is not implemented; use it with act_quant_dtype int8",
            ))
        }
        // OSL's α search (validate has checked it is exactly A8W8 without KV quantization).
        OutliersSuppression::OutlierSuppressionLite => {}
        OutliersSuppression::OutlierSuppressionPlus => {
            return Err(not_implemented(
                "outliers_suppression",
                "outlier-suppression+",
                "OutlierSuppression+ is not implemented yet; SmoothQuant and OutlierSuppression-Lite are",
            ))
        }
    }
    if config.act_quant_dtype.is_some() && config.weight_quant_dtype != Some(QuantDtype::Int8) {
        // A8W4 (validate has checked per_token activations and GPTQ): the original requires
        // act-order in quantize mode (spec §3.8).
        if !config.gptq.desc_act {
            return Err(not_implemented(
                "gptq.desc_act",
                "false",
                "A8W4 (low-bit weights with int8 activations) needs GPTQ with act-order: set gptq.desc_act (and gptq.static_groups) to true",
            ));
        }
    }
    if config.precision_recovery == crate::config::PrecisionRecovery::Gptq
        && config.gptq.desc_act
        && !config.gptq.static_groups
        && config.weight_quant_granularity == crate::config::QuantGranularity::PerGroup
    {
        return Err(not_implemented(
            "gptq.static_groups",
            "false",
            "act-order (gptq.desc_act) with per-group weights needs gptq.static_groups = true: dynamic groups would need a reordered g_idx, which the exports do not write",
        ));
    }
    if config.mode == PtqMode::Deploy {
        return Err(not_implemented(
            "mode",
            "deploy",
            "quantizing runs in quantize mode; a quantized checkpoint is loaded with deploy::load",
        ));
    }
    Ok(())
}

/// [`check`] on the network configuration and on every layer policy; an error names the policy.
pub fn check_recipe(recipe: &Recipe) -> Result<(), ConfigError> {
    for (source, config) in recipe.configs() {
        check(config).map_err(|e| match (source, e) {
            ("network", e) => e,
            (
                pattern,
                ConfigError::NotImplemented {
                    field,
                    value,
                    message,
                },
            ) => ConfigError::NotImplemented {
                field,
                value,
                message: format!("{message} (layer policy `{pattern}`)"),
            },
            (_, e) => e,
        })?;
    }
    if recipe.configs().all(|(_, c)| {
        c.weight_scheme().is_none() && c.kvcache_quant_dtype.is_none() && !c.prune.is_on()
    }) {
        return Err(crate::config::invalid(
            "weight_quant_dtype",
            "nothing to quantize: no configuration sets a weight or KV-cache dtype or a prune method",
        ));
    }
    Ok(())
}
