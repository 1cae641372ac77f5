//! CT display windows: a centre and a width in Hounsfield units, mapped to [0, 1].

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A window: values from `centre - width/2` to `centre + width/2` map linearly onto [0, 1];
/// values outside are clamped.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Centre (level), in the data's units (Hounsfield units for CT).
    pub center: f32,
    /// Width, > 0.
    pub width: f32,
}

/// The named presets, (name, centre, width) in Hounsfield units.
pub const PRESETS: [(&str, f32, f32); 4] = [
    ("brain", 40.0, 80.0),
    ("subdural", 75.0, 215.0),
    ("bone", 600.0, 2800.0),
    ("lung", -600.0, 1500.0),
];

impl Window {
    /// A preset by name (`brain`, `subdural`, `bone`, `lung`).
    pub fn preset(name: &str) -> Result<Window> {
        PRESETS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|&(_, center, width)| Window { center, width })
            .ok_or_else(|| {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                Error::invalid(
                    "preprocess.window",
                    format!(
                        "unknown preset {name:?}; presets: {}, or {{center: C, width: W}}",
                        names.join(", ")
                    ),
                )
            })
    }

    /// Checks the window can be applied.
    pub fn validate(&self) -> Result<()> {
        if self.center.is_finite() && self.width.is_finite() && self.width > 0.0 {
            Ok(())
        } else {
            Err(Error::invalid(
                "preprocess.window",
                format!(
                    "center {} and width {} must be finite with width > 0",
                    self.center, self.width
                ),
            ))
        }
    }

    /// The lowest and highest value of the window.
    pub fn range(&self) -> (f32, f32) {
        (
            self.center - self.width / 2.0,
            self.center + self.width / 2.0,
        )
    }

    /// Maps values in place onto [0, 1].
    pub fn apply(&self, values: &mut [f32]) {
        let (lo, _) = self.range();
        let inv = 1.0 / self.width;
        for v in values {
            *v = ((*v - lo) * inv).clamp(0.0, 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brain_window_maps_0_to_80_hu_onto_0_to_1() {
        let w = Window::preset("brain").unwrap();
        let mut v = [-1000.0, 0.0, 40.0, 60.0, 80.0, 1000.0];
        w.apply(&mut v);
        assert_eq!(v, [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]);
    }

    #[test]
    fn unknown_presets_and_empty_widths_are_refused() {
        let e = Window::preset("liver").unwrap_err().to_string();
        assert!(e.contains("liver") && e.contains("brain"), "{e}");
        let bad = Window {
            center: 0.0,
            width: 0.0,
        };
        assert!(bad.validate().is_err());
    }
}
