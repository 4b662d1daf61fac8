//! Listings as an aligned table with relative times, as JSON, or as TSV.

use std::io::Write;

use serde_json::{Map, Value};

/// How listings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Tsv,
}

/// A cell: plain text, a number (a JSON number in JSON output), or a point in time
/// (RFC 3339) shown relative to now in text output.
#[derive(Debug, Clone)]
pub enum Cell {
    Text(String),
    Number(u64),
    Time(String),
}

impl Cell {
    fn raw(&self) -> String {
        match self {
            Cell::Text(s) | Cell::Time(s) => s.clone(),
            Cell::Number(n) => n.to_string(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Cell::Text(s) | Cell::Time(s) => Value::String(s.clone()),
            Cell::Number(n) => Value::from(*n),
        }
    }
}

/// "5d ago", "3h ago", "12m ago", "40s ago", "just now".
pub fn relative_time(now: time::OffsetDateTime, then: time::OffsetDateTime) -> String {
    let secs = (now - then).whole_seconds();
    match secs {
        s if s < 1 => "just now".into(),
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

fn shown(cell: &Cell, now: time::OffsetDateTime) -> String {
    match cell {
        Cell::Text(_) | Cell::Number(_) => cell.raw(),
        Cell::Time(s) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| relative_time(now, t))
                .unwrap_or_else(|_| s.clone())
        }
    }
}

/// Print `rows` under `columns` as text or TSV, or, with `-o json`, `items`: the API's
/// objects, which carry fields the table has no room for (one object per row).
pub fn print_items(
    out: &mut dyn Write,
    format: Format,
    columns: &[&str],
    rows: &[Vec<Cell>],
    items: Vec<Value>,
) -> std::io::Result<()> {
    match format {
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&Value::Array(items)).unwrap_or_default()
        ),
        Format::Text | Format::Tsv => print(out, format, columns, rows),
    }
}

/// `pairs` followed by the fields of `object` (an API object): an API object placed in
/// context, e.g. a tag with its team and artifact.
pub fn in_context(pairs: &[(&str, &str)], object: &impl serde::Serialize) -> Value {
    let mut m: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    if let Ok(Value::Object(fields)) = serde_json::to_value(object) {
        m.extend(fields);
    }
    Value::Object(m)
}

/// Print `rows` under `columns`.
pub fn print(
    out: &mut dyn Write,
    format: Format,
    columns: &[&str],
    rows: &[Vec<Cell>],
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            let list: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let m: Map<String, Value> = columns
                        .iter()
                        .zip(r)
                        .map(|(c, v)| ((*c).to_owned(), v.json()))
                        .collect();
                    Value::Object(m)
                })
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            )
        }
        Format::Tsv => {
            writeln!(out, "{}", columns.join("\t"))?;
            for r in rows {
                let cells: Vec<String> = r.iter().map(Cell::raw).collect();
                writeln!(out, "{}", cells.join("\t"))?;
            }
            Ok(())
        }
        Format::Text => {
            let now = time::OffsetDateTime::now_utc();
            let shown_rows: Vec<Vec<String>> = rows
                .iter()
                .map(|r| r.iter().map(|c| shown(c, now)).collect())
                .collect();
            let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
            for r in &shown_rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |cells: Vec<String>| {
                let mut s = String::new();
                for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                    if i + 1 == cells.len() {
                        s.push_str(c);
                    } else {
                        s.push_str(&format!("{c:<w$} ", w = *w));
                    }
                }
                s
            };
            writeln!(
                out,
                "{}",
                line(columns.iter().map(|c| c.to_uppercase()).collect())
            )?;
            for r in shown_rows {
                writeln!(out, "{}", line(r))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = time::OffsetDateTime::now_utc();
        let ago = |s: i64| relative_time(now, now - time::Duration::seconds(s));
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(40), "40s ago");
        assert_eq!(ago(12 * 60 + 5), "12m ago");
        assert_eq!(ago(3 * 3600), "3h ago");
        assert_eq!(ago(5 * 86_400 + 7), "5d ago");
    }

    #[test]
    fn formats() {
        let rows = vec![
            vec![
                Cell::Text("a".into()),
                Cell::Time("2015-06-11T16:13:29.152Z".into()),
            ],
            vec![
                Cell::Text("longer".into()),
                Cell::Time("2015-06-11T16:13:29.152Z".into()),
            ],
        ];
        let numbered = vec![vec![Cell::Number(3), Cell::Text("3".into())]];
        let mut out = Vec::new();
        print(&mut out, Format::Json, &["seq", "tag"], &numbered).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0]["seq"], serde_json::json!(3), "numbers are numbers");
        assert_eq!(v[0]["tag"], serde_json::json!("3"), "text stays text");
        let mut out = Vec::new();
        print(&mut out, Format::Tsv, &["name", "created"], &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "name\tcreated\na\t2015-06-11T16:13:29.152Z\nlonger\t2015-06-11T16:13:29.152Z\n"
        );
        let mut out = Vec::new();
        print(&mut out, Format::Json, &["name", "created"], &rows).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[1]["name"], "longer");
        let mut out = Vec::new();
        print(&mut out, Format::Text, &["name", "created"], &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME   CREATED");
        assert!(
            lines[1].starts_with("a      ") && lines[1].ends_with("d ago"),
            "{text}"
        );
    }
}
