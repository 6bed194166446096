//! The per-row sampling parameters: one table, [`define_params!`], invoked once, generates the
//! [`RowParams`] struct, its all-off `Default`, the column order ([`PARAM_NAMES`],
//! [`N_PARAMS`]), the validation of a parameter row ([`RowParams::from_values`]) and the
//! metadata the Python layer builds its API from ([`PARAMS`]).
//!
//! Adding a parameter is adding one row to the table (and reading the field in a kernel).

use crate::dry::Dry;
use crate::error::SamplingError;
use crate::penalty::Penalties;

/// What the Python layer needs to know about one parameter (see [`PARAMS`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamInfo {
    /// The name as the Python API spells it (also the field of [`RowParams`]).
    pub name: &'static str,
    /// The "off" value, the one `None` stands for.
    pub default: f64,
    /// Whether only whole numbers are accepted.
    pub integer: bool,
    /// One line of help text.
    pub help: &'static str,
    /// The accepted range, in words (the end of an invalid-parameter error).
    pub expected: &'static str,
}

/// How a field's type is read from its column (every column is `f64`).
pub trait ParamValue: Sized {
    /// Whether the type holds whole numbers only: a value with a fraction is then invalid.
    const INTEGER: bool;
    /// The field's value for a validated column value.
    fn from_f64(x: f64) -> Self;
}

impl ParamValue for f64 {
    const INTEGER: bool = false;
    fn from_f64(x: f64) -> Self {
        x
    }
}

impl ParamValue for i64 {
    const INTEGER: bool = true;
    /// Saturates at the ends of `i64` (a huge window is simply "all").
    fn from_f64(x: f64) -> Self {
        x as i64
    }
}

impl ParamValue for usize {
    const INTEGER: bool = true;
    /// Saturates at `usize::MAX` (a huge top-k is simply "all").
    fn from_f64(x: f64) -> Self {
        if x >= usize::MAX as f64 {
            usize::MAX
        } else {
            x as usize
        }
    }
}

/// Validates column value `value` of parameter `name` in row `row`: `ok` is the row's own check
/// of the table; NaN is always invalid, and so is a fraction for a whole-number type.
fn check<T: ParamValue>(
    name: &'static str,
    value: f64,
    ok: bool,
    expected: &'static str,
    row: usize,
) -> Result<T, SamplingError> {
    if ok && !value.is_nan() && (!T::INTEGER || value.fract() == 0.0) {
        Ok(T::from_f64(value))
    } else {
        Err(SamplingError::InvalidParameter {
            name,
            row,
            value,
            expected,
        })
    }
}

/// Generates everything about the parameters from one table. Each row:
///
/// ```text
/// name: type = off_default, valid |x| check_of_x => "expected range", help "one line";
/// ```
///
/// `name` is the field and the Python name; `type` is `f64`, or `usize` for a whole number
/// (which also rejects fractions and saturates at `usize::MAX`); the column's value is invalid
/// unless `check_of_x` holds for it (NaN never passes); "expected range" ends the error message
/// and the help line documents the field. Rows are in column order.
macro_rules! define_params {
    ($(
        $name:ident : $ty:ty = $default:literal,
            valid |$x:ident| $check:expr => $expected:literal,
            help $help:literal;
    )+) => {
        /// Sampling parameters of one row, validated.
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct RowParams {
            $(
                #[doc = $help]
                pub $name: $ty,
            )+
        }

        /// Parameter names as the Python API spells them, in the column order of a parameter
        /// row.
        pub const PARAM_NAMES: [&str; N_PARAMS] = [$(stringify!($name)),+];

        /// Number of per-row parameters, in the column order of [`PARAM_NAMES`].
        pub const N_PARAMS: usize = [$(stringify!($name)),+].len();

        /// Every parameter's metadata, in column order.
        pub const PARAMS: [ParamInfo; N_PARAMS] = [$(
            ParamInfo {
                name: stringify!($name),
                default: $default,
                integer: <$ty as ParamValue>::INTEGER,
                help: $help,
                expected: $expected,
            },
        )+];

        impl Default for RowParams {
            /// Every parameter off.
            fn default() -> Self {
                Self {
                    $($name: <$ty as ParamValue>::from_f64($default),)+
                }
            }
        }

        impl RowParams {
            /// Validates one parameter row laid out as [`PARAM_NAMES`]; `row` names the row in
            /// errors (the first invalid parameter in column order is reported).
            pub fn from_values(v: &[f64], row: usize) -> Result<Self, SamplingError> {
                let &[$($name),+] = <&[f64; N_PARAMS]>::try_from(v).map_err(|_| {
                    SamplingError::Shape(format!(
                        "a parameter row has {} values, expected {N_PARAMS}",
                        v.len()
                    ))
                })?;
                Ok(Self {
                    $(
                        $name: check(
                            stringify!($name),
                            $name,
                            {
                                let $x: f64 = $name;
                                $check
                            },
                            $expected,
                            row,
                        )?,
                    )+
                })
            }
        }
    };
}

define_params! {
    temperature: f64 = 1.0,
        valid |x| x.is_finite() && x >= 0.0 => "a finite number >= 0",
        help "Temperature T >= 0 dividing the logits; 0 is greedy (argmax).";
    dynatemp_range: f64 = 0.0,
        valid |x| x.is_finite() && x >= 0.0 => "a finite number >= 0",
        help "Dynamic temperature: the entropy-scaled temperature lies in [T - range, T + range]; 0 is off.";
    dynatemp_exponent: f64 = 1.0,
        valid |x| x.is_finite() && x >= 0.0 => "a finite number >= 0",
        help "Dynamic temperature: exponent of the normalised entropy.";
    top_n_sigma: f64 = 0.0,
        valid |x| x.is_finite() && x >= 0.0 => "a finite number >= 0 (0 is off)",
        help "Keep logits >= max - n * sigma, sigma the standard deviation of the finite logits; 0 is off.";
    top_k: usize = 0.0,
        valid |x| x.is_finite() && x >= 0.0 => "a whole number >= 0 (0 or None is off)",
        help "Keep the k largest scaled logits (ties at the boundary kept); 0 is off.";
    top_p: f64 = 1.0,
        valid |x| x > 0.0 && x <= 1.0 => "a number in (0, 1]",
        help "Keep the smallest most-probable set of mass >= top_p (nucleus); 1 is off.";
    min_p: f64 = 0.0,
        valid |x| (0.0..1.0).contains(&x) => "a number in [0, 1)",
        help "Keep tokens of probability >= min_p times the largest; 0 is off.";
    typical_p: f64 = 1.0,
        valid |x| x > 0.0 && x <= 1.0 => "a number in (0, 1]",
        help "Locally typical: keep the tokens closest to the entropy, of mass >= typical_p; 1 is off.";
    epsilon_cutoff: f64 = 0.0,
        valid |x| (0.0..1.0).contains(&x) => "a number in [0, 1)",
        help "Drop tokens of probability < epsilon_cutoff; 0 is off.";
    eta_cutoff: f64 = 0.0,
        valid |x| (0.0..1.0).contains(&x) => "a number in [0, 1)",
        help "Drop tokens of probability < min(eta, sqrt(eta) * exp(-entropy)); 0 is off.";
    xtc_probability: f64 = 0.0,
        valid |x| (0.0..=1.0).contains(&x) => "a number in [0, 1]",
        help "XTC: the chance (per row and step, seeded) that the top choices are excluded; 0 is off.";
    xtc_threshold: f64 = 0.1,
        valid |x| (0.0..=1.0).contains(&x) => "a number in [0, 1]",
        help "XTC: of 2+ tokens of probability >= this, all but the least probable are excluded.";
    min_tokens_to_keep: usize = 0.0,
        valid |x| x.is_finite() && x >= 0.0 => "a whole number >= 0",
        help "The fewest tokens every truncating stage keeps (0 and 1: no floor).";
    repetition_penalty: f64 = 1.0,
        valid |x| x.is_finite() && x > 0.0 => "a finite number > 0",
        help "Multiplicative (CTRL) penalty on tokens of the history; 1 is off.";
    frequency_penalty: f64 = 0.0,
        valid |x| x.is_finite() => "a finite number",
        help "Additive penalty per occurrence of a token in the history; 0 is off.";
    presence_penalty: f64 = 0.0,
        valid |x| x.is_finite() => "a finite number",
        help "Additive penalty on every token present in the history; 0 is off.";
    frequency_scale: f64 = 1.0,
        valid |x| x.is_finite() && x >= 1.0 => "a finite number >= 1",
        help "k-scaling: per-occurrence factor of a seen token's temperature; 1 is off.";
    presence_scale: f64 = 1.0,
        valid |x| x.is_finite() && x >= 1.0 => "a finite number >= 1",
        help "k-scaling: factor of a seen token's temperature; 1 is off.";
    penalty_last_n: i64 = -1.0,
        valid |x| x >= -1.0 => "a whole number >= -1 (-1: the whole history, 0: none)",
        help "The penalties count only the last n history ids; -1 is the whole history, 0 none.";
    dry_multiplier: f64 = 0.0,
        valid |x| x.is_finite() && x >= 0.0 => "a finite number >= 0 (0 is off)",
        help "DRY: penalty multiplier of a token that would extend a repeat; 0 is off.";
    dry_base: f64 = 1.75,
        valid |x| x.is_finite() && x >= 1.0 => "a finite number >= 1",
        help "DRY: the penalty grows as base ** (repeat length - allowed length).";
    dry_allowed_length: usize = 2.0,
        valid |x| x.is_finite() && x >= 0.0 => "a whole number >= 0",
        help "DRY: repeats shorter than this are not penalised.";
    dry_penalty_last_n: i64 = -1.0,
        valid |x| x >= -1.0 => "a whole number >= -1 (-1: the whole history, 0: DRY off)",
        help "DRY: how many of the last history ids it scans; -1 is the whole history, 0 off.";
    no_repeat_ngram_size: usize = 0.0,
        valid |x| x.is_finite() && x >= 0.0 => "a whole number >= 0 (0 is off)",
        help "Ban tokens that would repeat an n-gram of the history; 0 is off.";
    mirostat: usize = 0.0,
        valid |x| x == 0.0 || x == 1.0 || x == 2.0 => "0 (off), 1 or 2",
        help "Mirostat version (adaptive truncation to a target surprise); 0 is off.";
    mirostat_tau: f64 = 5.0,
        valid |x| x.is_finite() && x >= 0.0 => "a finite number >= 0",
        help "Mirostat: the target surprise in bits.";
    mirostat_eta: f64 = 0.1,
        valid |x| x.is_finite() && x >= 0.0 => "a finite number >= 0",
        help "Mirostat: the learning rate of its state mu.";
}

impl RowParams {
    /// Whether the count penalties (repetition, frequency/presence, k-scaling) change the row.
    pub fn penalties_on(&self) -> bool {
        !self.penalties().is_off() && self.penalty_last_n != 0
    }

    /// The DRY parameters of the row.
    pub fn dry(&self) -> Dry {
        Dry {
            multiplier: self.dry_multiplier,
            base: self.dry_base,
            allowed_length: self.dry_allowed_length,
            last_n: self.dry_penalty_last_n,
        }
    }

    /// Whether any stage reads the history (so a row with one is modified).
    pub fn reads_history(&self) -> bool {
        self.penalties_on() || self.dry().is_on() || self.no_repeat_ngram_size > 0
    }

    /// The penalty parameters of the row, as the penalty kernels take them.
    pub fn penalties(&self) -> Penalties {
        Penalties {
            repetition: self.repetition_penalty,
            frequency: self.frequency_penalty,
            presence: self.presence_penalty,
            frequency_scale: self.frequency_scale,
            presence_scale: self.presence_scale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parameter row with every parameter off, from the table.
    fn off() -> [f64; N_PARAMS] {
        PARAMS.map(|p| p.default)
    }

    /// The column of parameter `name`.
    fn col(name: &str) -> usize {
        PARAM_NAMES
            .iter()
            .position(|&n| n == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))
    }

    #[test]
    fn column_order_and_defaults() {
        assert_eq!(
            PARAM_NAMES,
            [
                "temperature",
                "dynatemp_range",
                "dynatemp_exponent",
                "top_n_sigma",
                "top_k",
                "top_p",
                "min_p",
                "typical_p",
                "epsilon_cutoff",
                "eta_cutoff",
                "xtc_probability",
                "xtc_threshold",
                "min_tokens_to_keep",
                "repetition_penalty",
                "frequency_penalty",
                "presence_penalty",
                "frequency_scale",
                "presence_scale",
                "penalty_last_n",
                "dry_multiplier",
                "dry_base",
                "dry_allowed_length",
                "dry_penalty_last_n",
                "no_repeat_ngram_size",
                "mirostat",
                "mirostat_tau",
                "mirostat_eta",
            ]
        );
        assert_eq!(PARAMS.map(|p| p.name), PARAM_NAMES);
        assert_eq!(PARAMS.map(|p| p.integer).iter().filter(|&&b| b).count(), 7);
        assert!(PARAMS[col("min_tokens_to_keep")].integer);
        assert!(PARAMS[col("top_k")].integer);
        let d = RowParams::default();
        assert_eq!(RowParams::from_values(&off(), 0), Ok(d));
        assert!(d.penalties().is_off());
        assert_eq!(d.temperature, 1.0);
        assert_eq!(d.top_k, 0);
        assert_eq!(d.top_p, 1.0);
        assert_eq!(d.min_p, 0.0);
    }

    #[test]
    fn top_k_saturates_and_rejects_fractions() {
        let row = |k: f64| {
            let mut v = off();
            v[col("top_k")] = k;
            RowParams::from_values(&v, 2)
        };
        assert_eq!(row(50.0).unwrap().top_k, 50);
        assert_eq!(row(1e300).unwrap().top_k, usize::MAX);
        assert_eq!(row(usize::MAX as f64).unwrap().top_k, usize::MAX);
        for bad in [0.5, -1.0, f64::INFINITY, f64::NAN] {
            match row(bad) {
                Err(SamplingError::InvalidParameter {
                    name: "top_k",
                    row: 2,
                    expected,
                    ..
                }) => assert_eq!(expected, "a whole number >= 0 (0 or None is off)"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn errors_name_the_first_invalid_column_and_keep_their_text() {
        let mut v = off();
        v[col("top_p")] = 0.0;
        v[col("presence_scale")] = 0.5;
        let e = RowParams::from_values(&v, 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "top_p = 0 (row 4) is invalid: expected a number in (0, 1]"
        );
        assert_eq!(
            RowParams::from_values(&off()[..8], 0).unwrap_err(),
            SamplingError::Shape(format!("a parameter row has 8 values, expected {N_PARAMS}"))
        );
    }
}
