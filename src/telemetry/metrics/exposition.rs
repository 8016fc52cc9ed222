//! The Prometheus text exposition format (version 0.0.4), written as client_golang writes it:
//! families sorted by name, `# HELP` with component-base's `[ALPHA] ` prefix, `# TYPE`, label
//! pairs sorted by name with `le` last, numbers in Go's shortest `%g` form.

use std::fmt::Write;

/// A histogram with fixed upper bounds (`le`), as client_golang keeps one.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    // Observations per bucket (not cumulative); one more for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: Vec<f64>) -> Self {
        let n = bounds.len();
        Histogram {
            bounds,
            counts: vec![0; n + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The upper bounds.
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }
}

/// client_golang's `ExponentialBuckets(start, factor, count)`.
pub fn exponential_buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(count);
    let mut b = start;
    for _ in 0..count {
        out.push(b);
        b *= factor;
    }
    out
}

/// client_golang's `LinearBuckets(start, width, count)`.
pub fn linear_buckets(start: f64, width: f64, count: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(count);
    let mut b = start;
    for _ in 0..count {
        out.push(b);
        b += width;
    }
    out
}

/// A number as Go's `strconv.FormatFloat(v, 'g', -1, 64)` prints it (what client_golang
/// writes): shortest round-trip digits, exponent form below 1e-4 and from 1e+06 on.
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is a number");
    if (-4..6).contains(&exp) {
        return format!("{v}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// The `# TYPE` of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One family's samples, each with its label pairs.
pub enum Samples<'a> {
    /// Counter or gauge values.
    Values(Vec<(Vec<(&'static str, String)>, f64)>),
    /// Histograms.
    Histograms(Vec<(Vec<(&'static str, String)>, &'a Histogram)>),
}

/// One metric family to write.
pub struct Family<'a> {
    /// The full name (`kubeproxy_…`).
    pub name: &'static str,
    /// The help text, without component-base's stability prefix.
    pub help: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its series; a family without any is not written at all (as client_golang skips an
    /// empty vector).
    pub samples: Samples<'a>,
}

/// Writes `families` (any order) in the text format.
pub fn write(mut families: Vec<Family<'_>>) -> String {
    families.sort_by_key(|f| f.name);
    let mut out = String::new();
    for f in &families {
        let empty = match &f.samples {
            Samples::Values(v) => v.is_empty(),
            Samples::Histograms(h) => h.is_empty(),
        };
        if empty {
            continue;
        }
        let _ = writeln!(out, "# HELP {} [ALPHA] {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
        match &f.samples {
            Samples::Values(values) => {
                let mut values: Vec<_> = values.iter().collect();
                values.sort_by(|a, b| a.0.cmp(&b.0));
                for (labels, v) in values {
                    sample(&mut out, f.name, "", labels, None, *v);
                }
            }
            Samples::Histograms(hs) => {
                let mut hs: Vec<_> = hs.iter().collect();
                hs.sort_by(|a, b| a.0.cmp(&b.0));
                for (labels, h) in hs {
                    let mut cumulative = 0u64;
                    for (i, bound) in h.bounds.iter().enumerate() {
                        cumulative += h.counts[i];
                        sample(
                            &mut out,
                            f.name,
                            "_bucket",
                            labels,
                            Some(&go_float(*bound)),
                            cumulative as f64,
                        );
                    }
                    cumulative += h.counts[h.bounds.len()];
                    sample(
                        &mut out,
                        f.name,
                        "_bucket",
                        labels,
                        Some("+Inf"),
                        cumulative as f64,
                    );
                    sample(&mut out, f.name, "_sum", labels, None, h.sum);
                    sample(&mut out, f.name, "_count", labels, None, h.count as f64);
                }
            }
        }
    }
    out
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&'static str, String)],
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let mut sorted: Vec<&(&str, String)> = labels.iter().collect();
    sorted.sort_by_key(|(k, _)| *k);
    if !sorted.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in sorted {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        if let Some(le) = le {
            if !first {
                out.push(',');
            }
            let _ = write!(out, "le=\"{le}\"");
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&go_float(value));
    out.push('\n');
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_go_prints_them() {
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (0.001, "0.001"),
            (16.384, "16.384"),
            (0.25, "0.25"),
            (300.0, "300"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (1.7000000001234567e9, "1.7000000001234567e+09"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (f64::INFINITY, "+Inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(go_float(v), want, "{v}");
        }
    }

    #[test]
    fn exponential_buckets_match_upstream() {
        let b: Vec<String> = exponential_buckets(0.001, 2.0, 15)
            .into_iter()
            .map(go_float)
            .collect();
        assert_eq!(
            b.join(" "),
            "0.001 0.002 0.004 0.008 0.016 0.032 0.064 0.128 0.256 0.512 1.024 2.048 4.096 8.192 16.384"
        );
    }

    #[test]
    fn a_histogram_counts_le_and_writes_cumulative_buckets() {
        let mut h = Histogram::new(vec![1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let text = write(vec![Family {
            name: "x_seconds",
            help: "X",
            kind: Kind::Histogram,
            samples: Samples::Histograms(vec![(vec![("ip_family", "IPv4".into())], &h)]),
        }]);
        assert_eq!(
            text,
            "# HELP x_seconds [ALPHA] X\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{ip_family=\"IPv4\",le=\"1\"} 2\n\
             x_seconds_bucket{ip_family=\"IPv4\",le=\"2\"} 3\n\
             x_seconds_bucket{ip_family=\"IPv4\",le=\"+Inf\"} 4\n\
             x_seconds_sum{ip_family=\"IPv4\"} 6\n\
             x_seconds_count{ip_family=\"IPv4\"} 4\n"
        );
    }

    #[test]
    fn empty_families_are_left_out_and_labels_sorted() {
        let text = write(vec![
            Family {
                name: "b",
                help: "B",
                kind: Kind::Gauge,
                samples: Samples::Values(vec![(
                    vec![("table", "nat".into()), ("ip_family", "IPv6".into())],
                    3.0,
                )]),
            },
            Family {
                name: "a",
                help: "A",
                kind: Kind::Counter,
                samples: Samples::Values(Vec::new()),
            },
        ]);
        assert_eq!(
            text,
            "# HELP b [ALPHA] B\n# TYPE b gauge\nb{ip_family=\"IPv6\",table=\"nat\"} 3\n"
        );
    }
}
