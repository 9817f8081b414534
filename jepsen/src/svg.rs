//! The latency-over-time plot, drawn as SVG text: one point per operation at its invocation
//! time, its latency on a logarithmic axis, coloured by outcome (ok blue, fail red, info orange;
//! an operation that never completed sits on the top edge), with every fault window shaded and
//! labelled, as Jepsen draws them.

use std::fmt::Write as _;

use concord_checker::Status;

use crate::nemesis::FaultWindow;

/// One operation as the plot sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub invoke_us: u64,
    pub complete_us: Option<u64>,
    pub status: Status,
}

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;
/// Latency axis bounds in milliseconds (log scale).
const LATENCY_MIN_MS: f64 = 0.1;

fn colour(status: Status) -> &'static str {
    match status {
        Status::Ok => "#1f77b4",
        Status::Fail => "#d62728",
        Status::Info => "#ff7f0e",
    }
}

/// Renders the plot; `end_us` is the run's length.
pub fn latency_plot(
    title: &str,
    samples: &[Sample],
    windows: &[FaultWindow],
    end_us: u64,
) -> String {
    let end_us = end_us.max(1) as f64;
    let latencies_ms: Vec<f64> = samples
        .iter()
        .filter_map(|sample| {
            sample
                .complete_us
                .map(|complete| (complete.saturating_sub(sample.invoke_us)) as f64 / 1000.0)
        })
        .collect();
    let max_ms = latencies_ms
        .iter()
        .copied()
        .fold(10.0_f64, f64::max)
        .max(LATENCY_MIN_MS * 10.0);
    let log_min = LATENCY_MIN_MS.log10();
    let log_max = max_ms.log10().ceil().max(log_min + 1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |us: f64| LEFT + plot_w * (us / end_us).clamp(0.0, 1.0);
    let y = |ms: f64| {
        let fraction = (ms.max(LATENCY_MIN_MS).log10() - log_min) / (log_max - log_min);
        TOP + plot_h * (1.0 - fraction.clamp(0.0, 1.0))
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    for window in windows {
        let x0 = x(window.start_us as f64);
        let x1 = x(window.end_us as f64).max(x0 + 1.0);
        let _ = writeln!(
            svg,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#888" fill-opacity="0.18"/><text x="{:.1}" y="{:.1}" font-size="10" fill="#444">{} {}</text>"##,
            x1 - x0,
            x0 + 2.0,
            TOP + 12.0,
            window.kind,
            escape(&window.detail)
        );
    }
    // Axes, decades on the latency axis, every 10 s on the time axis.
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/><line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/>"#,
        TOP + plot_h,
        LEFT + plot_w
    );
    let mut decade = log_min;
    while decade <= log_max + 1e-9 {
        let ms = 10f64.powf(decade);
        let yy = y(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            format_ms(ms)
        );
        decade += 1.0;
    }
    let seconds = (end_us / 1e6).ceil() as u64;
    let step = if seconds > 120 { 30 } else { 10 };
    for second in (0..=seconds).step_by(step) {
        let xx = x(second as f64 * 1e6);
        let _ = writeln!(
            svg,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{second}</text>"#,
            TOP + plot_h + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text><text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency (ms)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for sample in samples {
        let xx = x(sample.invoke_us as f64);
        let yy = match sample.complete_us {
            Some(complete) => y((complete.saturating_sub(sample.invoke_us)) as f64 / 1000.0),
            None => TOP,
        };
        let _ = writeln!(
            svg,
            r#"<circle cx="{xx:.1}" cy="{yy:.1}" r="1.6" fill="{}" fill-opacity="0.6"/>"#,
            colour(sample.status)
        );
    }
    let mut legend_x = LEFT + plot_w - 180.0;
    for (status, label) in [
        (Status::Ok, "ok"),
        (Status::Fail, "fail"),
        (Status::Info, "info"),
    ] {
        let _ = writeln!(
            svg,
            r#"<circle cx="{legend_x:.1}" cy="14" r="4" fill="{}"/><text x="{:.1}" y="18">{label}</text>"#,
            colour(status),
            legend_x + 8.0
        );
        legend_x += 60.0;
    }
    svg.push_str("</svg>\n");
    svg
}

fn format_ms(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::NemesisKind;

    #[test]
    fn plot_has_a_point_per_operation_and_a_shaded_window_per_fault() {
        let samples = vec![
            Sample {
                invoke_us: 1_000_000,
                complete_us: Some(1_002_000),
                status: Status::Ok,
            },
            Sample {
                invoke_us: 5_000_000,
                complete_us: None,
                status: Status::Info,
            },
            Sample {
                invoke_us: 6_000_000,
                complete_us: Some(6_500_000),
                status: Status::Fail,
            },
        ];
        let windows = vec![FaultWindow {
            kind: NemesisKind::Kill,
            detail: "n2".into(),
            start_us: 4_000_000,
            end_us: 7_000_000,
        }];
        let svg = latency_plot("list-append <kill>", &samples, &windows, 10_000_000);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<circle").count(), samples.len() + 3);
        assert!(svg.contains("kill n2"));
        assert!(svg.contains("list-append &lt;kill&gt;"));
        assert!(svg.contains(r##"fill="#888""##));
    }
}
