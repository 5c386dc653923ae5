//! What this build implements. A configuration the original accepts but Golden Stick does not
//! implement yet is refused before any work starts, with an error that names the field: a tool
//! that silently produces a different kind of model than asked (say weight-only W8A16 for a
//! SmoothQuant A8W8 recipe) is worse than one that says no.

use crate::config::{OutliersSuppression, PtqConfig, PtqMode, QuantDtype, QuantGranularity};
use crate::recipe::Recipe;
use crate::ConfigError;

fn not_implemented(field: &'static str, value: impl Into<String>, message: &str) -> ConfigError {
    ConfigError::NotImplemented {
        field,
        value: value.into(),
        message: message.into(),
    }
}

/// Refuses what the layer-wise pipeline cannot do yet: static and A8W4 activation quantization,
/// KV-cache quantization, SmoothQuant and the OutlierSuppression variants, deploy mode, and
/// configurations that quantize nothing.
pub fn check(config: &PtqConfig) -> Result<(), ConfigError> {
    config.validate()?;
    match config.outliers_suppression {
        OutliersSuppression::None | OutliersSuppression::Awq => {}
        // SmoothQuant is built for dynamic per-token A8W8 (static per-tensor activations are
        // refused below).
        OutliersSuppression::Smooth if config.act_quant_dtype.is_some() => {}
        OutliersSuppression::Smooth => {
            return Err(not_implemented(
                "outliers_suppression",
                "smooth",
                "SmoothQuant without activation quantization is not implemented; use it with act_quant_dtype int8 and act_quant_granularity per_token",
            ))
        }
        OutliersSuppression::OutlierSuppressionLite => {
            return Err(not_implemented(
                "outliers_suppression",
                "outlier-suppression-lite",
                "OutlierSuppression-Lite is not implemented yet; weight-only RTN, GPTQ and AWQ are",
            ))
        }
        OutliersSuppression::OutlierSuppressionPlus => {
            return Err(not_implemented(
                "outliers_suppression",
                "outlier-suppression+",
                "OutlierSuppression+ is not implemented yet; weight-only RTN, GPTQ and AWQ are",
            ))
        }
    }
    if config.act_quant_dtype.is_some() {
        // Implemented: dynamic per-token int8 activations with int8 weights (A8W8 dynamic).
        if config.act_quant_granularity != QuantGranularity::PerToken {
            return Err(not_implemented(
                "act_quant_granularity",
                "per_tensor",
                "static per-tensor activation quantization (SmoothQuant-style A8W8) is not implemented yet; dynamic per_token is",
            ));
        }
        if config.weight_quant_dtype != Some(QuantDtype::Int8) {
            return Err(not_implemented(
                "weight_quant_dtype",
                format!("{:?}", config.weight_quant_dtype).to_lowercase(),
                "int8 activations with low-bit weights (A8W4) are not implemented yet; A8W8 with int8 weights is",
            ));
        }
    }
    if let Some(d) = config.kvcache_quant_dtype {
        return Err(not_implemented(
            "kvcache_quant_dtype",
            format!("{d:?}").to_lowercase(),
            "KV-cache quantization is not implemented yet",
        ));
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
    if recipe.configs().all(|(_, c)| c.weight_scheme().is_none()) {
        return Err(crate::config::invalid(
            "weight_quant_dtype",
            "nothing to quantize: no configuration sets a weight dtype",
        ));
    }
    Ok(())
}
