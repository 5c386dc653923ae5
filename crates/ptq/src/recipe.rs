//! Recipe files (TOML or YAML) and per-layer policies keyed by regular expressions (spec §2.5).

use crate::config::{invalid, ConfigError, PtqConfig};

/// Per-layer policies: the first regular expression that matches a layer's full name (anchored
/// at the start, as Python's `re.match`) gives its configuration; two matches are an error.
#[derive(Clone, Debug)]
pub struct LayerPolicies {
    rules: Vec<(regex::Regex, String, PtqConfig)>,
}

impl LayerPolicies {
    /// Builds the policies; every pattern must compile and every configuration validate.
    pub fn new(rules: Vec<(String, PtqConfig)>) -> Result<Self, ConfigError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (pattern, config) in rules {
            let re = regex::Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
                invalid(
                    "layer_policies.pattern",
                    format!("`{pattern}` is not a regular expression: {e}"),
                )
            })?;
            config.validate()?;
            compiled.push((re, pattern, config));
        }
        Ok(LayerPolicies { rules: compiled })
    }

    /// Every policy's configuration, in the order the policies were given.
    pub fn configs(&self) -> impl Iterator<Item = (&str, &PtqConfig)> {
        self.rules.iter().map(|(_, p, c)| (p.as_str(), c))
    }

    /// No policy at all.
    pub fn empty() -> Self {
        LayerPolicies { rules: Vec::new() }
    }

    /// The configuration for `layer`: its policy, or `network` when none matches.
    pub fn resolve<'a>(
        &'a self,
        layer: &str,
        network: &'a PtqConfig,
    ) -> Result<&'a PtqConfig, ConfigError> {
        let mut hits = self.rules.iter().filter(|(re, _, _)| re.is_match(layer));
        match (hits.next(), hits.next()) {
            (None, _) => Ok(network),
            (Some((_, _, c)), None) => Ok(c),
            (Some((_, a, _)), Some((_, b, _))) => Err(ConfigError::PolicyConflict {
                layer: layer.to_string(),
                first: a.clone(),
                second: b.clone(),
            }),
        }
    }
}

/// A recipe file: the network configuration and layer policies.
///
/// ```toml
/// weight_quant_dtype = "int4"
/// weight_quant_granularity = "per_group"
/// group_size = 64
/// precision_recovery = "gptq"
///
/// [[layer_policies]]
/// pattern = 'model\.layers\.\d+\.mlp\.down_proj'
/// weight_quant_dtype = "int8"
/// ```
///
/// The same recipe in YAML (`.yaml` or `.yml`):
///
/// ```yaml
/// weight_quant_dtype: int4
/// weight_quant_granularity: per_group
/// group_size: 64
/// precision_recovery: gptq
/// layer_policies:
///   - pattern: 'model\.layers\.\d+\.mlp\.down_proj'
///     weight_quant_dtype: int8
/// ```
///
/// A layer policy starts from the network configuration and overrides the fields it names.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub network: PtqConfig,
    pub layers: LayerPolicies,
}

impl From<PtqConfig> for Recipe {
    /// A recipe of one network configuration and no layer policies.
    fn from(network: PtqConfig) -> Self {
        Recipe {
            network,
            layers: LayerPolicies::empty(),
        }
    }
}

impl Recipe {
    /// Whether some configuration runs a step that learns from calibration data (GPTQ's
    /// Hessians, AWQ's searches, SmoothQuant's input maxima, static activation and KV-cache
    /// ranges); RTN and dynamic activations and caches need none.
    pub fn needs_calibration(&self) -> bool {
        use crate::steps::PtqStep;
        let (smooth, osl, awq, gptq) = (
            crate::steps::SmoothStep,
            crate::steps::OslStep,
            crate::steps::AwqStep,
            crate::steps::GptqStep,
        );
        self.configs().any(|(_, c)| {
            smooth.applies_to(c)
                || osl.applies_to(c)
                || awq.applies_to(c)
                || gptq.applies_to(c)
                || matches!(
                    c.prune.method,
                    crate::config::PruneMethod::Wanda | crate::config::PruneMethod::Sparsegpt
                )
                || c.activation_quant(None).is_err()
                || (c.kvcache_quant_dtype.is_some()
                    && c.kvcache_quant_granularity == crate::config::QuantGranularity::PerChannel)
        })
    }

    /// The network configuration and every policy's, each with where it comes from
    /// (`network` or the policy's pattern).
    pub fn configs(&self) -> impl Iterator<Item = (&str, &PtqConfig)> {
        std::iter::once(("network", &self.network)).chain(self.layers.configs())
    }

    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Recipe {
                    path: path.to_string(),
                    message: e.to_string(),
                })?;
        Self::from_table(table, path)
    }

    /// A YAML recipe with the same keys as the TOML one.
    pub fn from_yaml(text: &str, path: &str) -> Result<Self, ConfigError> {
        // Read into TOML's value type so both syntaxes share one validation path; YAML values
        // TOML cannot hold (null) are refused here with YAML's position.
        let table: toml::Table =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Recipe {
                path: path.to_string(),
                message: e.to_string(),
            })?;
        Self::from_table(table, path)
    }

    fn from_table(mut table: toml::Table, path: &str) -> Result<Self, ConfigError> {
        let recipe_error = |message: String| ConfigError::Recipe {
            path: path.to_string(),
            message,
        };
        let policies = match table.remove("layer_policies") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items,
            Some(_) => {
                return Err(recipe_error(
                    "`layer_policies` must be a list of tables ([[layer_policies]] in TOML)".into(),
                ))
            }
        };
        let network: PtqConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| recipe_error(e.to_string()))?;
        network.validate()?;
        let mut rules = Vec::with_capacity(policies.len());
        for (i, item) in policies.into_iter().enumerate() {
            let toml::Value::Table(mut overrides) = item else {
                return Err(recipe_error(format!("layer policy {i} is not a table")));
            };
            let pattern = match overrides.remove("pattern") {
                Some(toml::Value::String(p)) => p,
                _ => {
                    return Err(recipe_error(format!(
                        "layer policy {i} needs a `pattern` string"
                    )))
                }
            };
            // Start from the network configuration; the policy overrides what it names.
            // Sub-tables (`gptq`, `prune`, ...) merge key by key: `prune: {sparsity: 0.3}`
            // keeps the network's method.
            let mut merged = table.clone();
            for (key, value) in overrides {
                match (merged.get_mut(&key), value) {
                    (Some(toml::Value::Table(base)), toml::Value::Table(sub)) => base.extend(sub),
                    (_, value) => {
                        merged.insert(key, value);
                    }
                }
            }
            let config: PtqConfig =
                toml::Value::Table(merged)
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        recipe_error(format!("layer policy `{pattern}`: {e}"))
                    })?;
            rules.push((pattern, config));
        }
        Ok(Recipe {
            network,
            layers: LayerPolicies::new(rules)?,
        })
    }

    /// Reads a recipe file: YAML for `.yaml`/`.yml`, TOML otherwise.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Recipe {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let shown = path.display().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Self::from_yaml(&text, &shown),
            _ => Self::from_toml(&text, &shown),
        }
    }
}
