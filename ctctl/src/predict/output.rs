//! `ctctl predict`'s output: CSV (a header, one line per image) or one JSON document.

use clap::ValueEnum;

use super::Predictions;

/// Output formats of `ctctl predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// `id,input,label,predicted,p_<class>...,error`, one line per image.
    Csv,
    /// `{"classes": [...], "predictions": [{id, input, label, predicted, probabilities, error}]}`.
    Json,
}

/// A CSV field, quoted where it holds a comma, a quote or a line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The predictions in `format`.
pub fn render(p: &Predictions, format: Output) -> String {
    match format {
        Output::Json => serde_json::to_string_pretty(p).unwrap_or_default(),
        Output::Csv => {
            let mut header = vec![
                "id".to_string(),
                "input".into(),
                "label".into(),
                "predicted".into(),
            ];
            header.extend(p.classes.iter().map(|c| field(&format!("p_{c}"))));
            header.push("error".into());
            let mut out = header.join(",");
            out.push('\n');
            for r in &p.predictions {
                let mut line = vec![
                    field(&r.id),
                    field(&r.input),
                    field(r.label.as_deref().unwrap_or("")),
                    field(r.predicted.as_deref().unwrap_or("")),
                ];
                if r.probabilities.len() == p.classes.len() {
                    // Shortest text that reads back as the same f32.
                    line.extend(r.probabilities.iter().map(|v| v.to_string()));
                } else {
                    line.extend(p.classes.iter().map(|_| String::new()));
                }
                line.push(field(r.error.as_deref().unwrap_or("")));
                out.push_str(&line.join(","));
                out.push('\n');
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::Prediction;

    #[test]
    fn csv_quotes_what_needs_it_and_keeps_failed_rows() {
        let p = Predictions {
            classes: vec!["normal".into(), "pneumonia".into()],
            predictions: vec![
                Prediction {
                    id: "img-00".into(),
                    input: "a,b.png".into(),
                    label: None,
                    predicted: Some("pneumonia".into()),
                    probabilities: vec![0.25, 0.75],
                    error: None,
                },
                Prediction::failed(String::new(), "x.png".into(), "not a \"PNG\"".into()),
            ],
        };
        let csv = render(&p, Output::Csv);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "id,input,label,predicted,p_normal,p_pneumonia,error"
        );
        assert_eq!(lines[1], "img-00,\"a,b.png\",,pneumonia,0.25,0.75,");
        assert_eq!(lines[2], ",x.png,,,,,\"not a \"\"PNG\"\"\"");
        let json: serde_json::Value = serde_json::from_str(&render(&p, Output::Json)).unwrap();
        assert_eq!(json["predictions"][0]["probabilities"][1], 0.75);
        assert!(json["predictions"][1]["error"].is_string());
    }
}
