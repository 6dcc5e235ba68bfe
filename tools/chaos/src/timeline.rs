//! The run's picture, drawn the way Jepsen draws its runs: every operation's
//! latency over time, one colour per result, the fault windows shaded and
//! labelled (and, lighter, the time until writes were acknowledged again),
//! and each new leader marked. Drawn with `plotters` (its SVG
//! backend only) into `timeline.svg`.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::faults::Applied;
use crate::history::{Func, Record, Status};
use crate::schedule::FaultKind;

/// Ok operations drawn at most; beyond this they are thinned evenly.
const MAX_OK_POINTS: usize = 60_000;
/// Failed operations drawn at most (unknown ones are always all drawn).
const MAX_FAILED_POINTS: usize = 30_000;

const OK: RGBColor = RGBColor(44, 160, 44);
const FAILED: RGBColor = RGBColor(214, 39, 40);
const UNKNOWN: RGBColor = RGBColor(148, 103, 189);
const LEADER: RGBColor = RGBColor(31, 119, 180);

fn fault_colour(k: FaultKind) -> RGBColor {
    match k {
        FaultKind::KillLeader => RGBColor(255, 127, 14),
        FaultKind::KillFollower => RGBColor(255, 187, 120),
        FaultKind::Pause => RGBColor(188, 189, 34),
        FaultKind::PartitionLeader => RGBColor(227, 119, 194),
        FaultKind::PartitionSplit => RGBColor(247, 182, 210),
        FaultKind::OneWay => RGBColor(23, 190, 207),
        FaultKind::Loss => RGBColor(158, 218, 229),
        FaultKind::RestartCluster => RGBColor(140, 86, 75),
        FaultKind::PauseHandoff => RGBColor(188, 189, 34),
        FaultKind::PauseTransfer => RGBColor(23, 190, 207),
        FaultKind::MemberRestart => RGBColor(127, 127, 127),
        FaultKind::KillLeaderPause => RGBColor(196, 156, 148),
    }
}

/// What the picture shows.
pub struct Picture<'a> {
    /// The title line (the run's final line).
    pub title: &'a str,
    /// Every operation.
    pub records: &'a [Record],
    /// Every fault.
    pub faults: &'a [Applied],
    /// (microseconds, node, term) of each new leader.
    pub leaders: &'a [(u64, u32, u64)],
    /// Operation ids to mark as the checker's counterexamples.
    pub marked: &'a [u64],
    /// Length of the run in seconds.
    pub run_s: f64,
}

/// Writes the picture as an SVG file.
pub fn write(path: &Path, p: &Picture<'_>) -> Result<()> {
    let width = ((p.run_s * 25.0) as u32).clamp(1400, 9000);
    let root = SVGBackend::new(path, (width, 720)).into_drawing_area();
    draw(&root, p).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    root.present().map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn latency_ms(r: &Record) -> f64 {
    (r.ret_us.saturating_sub(r.call_us) as f64 / 1000.0).max(0.05)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    p: &Picture<'_>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (_, height) = root.dim_in_pixel();
    let (upper, lower) = root.split_vertically(height.saturating_sub(34));
    let x_max = p.run_s.max(1.0);
    // Headroom above the slowest operation for the fault labels.
    let y_top = p.records.iter().map(latency_ms).fold(100.0f64, f64::max) * 8.0;
    let y_bottom = 0.05;
    let mut chart = ChartBuilder::on(&upper)
        .caption(p.title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (y_bottom..y_top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("latency (ms, log)")
        .light_line_style(WHITE.mix(0.0))
        .draw()?;

    // Fault windows, shaded by kind and labelled at the top (on two rows,
    // so that close faults keep readable labels).
    for (i, f) in p.faults.iter().enumerate() {
        let (a, b) = (f.start_us as f64 / 1e6, f.end_us as f64 / 1e6);
        let colour = fault_colour(f.kind);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(a, y_bottom), (b.max(a + 0.02), y_top)],
            colour.mix(0.30).filled(),
        )))?;
        if let Some(ms) = f.recovery_ms {
            // The time until writes were acknowledged again, lighter.
            let r = b + ms as f64 / 1000.0;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(b, y_bottom), (r.max(b + 0.01), y_top)],
                colour.mix(0.12).filled(),
            )))?;
        }
        let label = match f.recovery_ms {
            Some(ms) => format!("{} {:?} ({ms} ms)", f.kind.name(), f.targets),
            None => format!("{} {:?} (no recovery)", f.kind.name(), f.targets),
        };
        chart.draw_series(std::iter::once(Text::new(
            label,
            (a, if i % 2 == 0 { y_top / 1.3 } else { y_top / 2.6 }),
            ("sans-serif", 11).into_font().color(&BLACK),
        )))?;
    }

    // New leaders: a vertical line and "n2 t7".
    for &(t, node, term) in p.leaders {
        let x = t as f64 / 1e6;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, y_bottom), (x, y_top)],
            LEADER.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("n{node} t{term}"),
            (x, y_top / 6.0),
            ("sans-serif", 11).into_font().color(&LEADER),
        )))?;
    }

    // Operations: one colour per result; gets are small dots, puts larger
    // dots, CAS writes rings.
    let stride = |status: Status, max: usize| {
        let total = p.records.iter().filter(|r| r.status == status).count();
        total.div_ceil(max).max(1)
    };
    let ok_stride = stride(Status::Ok, MAX_OK_POINTS);
    let failed_stride = stride(Status::Failed, MAX_FAILED_POINTS);
    for (status, colour, stride) in [
        (Status::Ok, OK, ok_stride),
        (Status::Failed, FAILED, failed_stride),
        (Status::Unknown, UNKNOWN, 1),
    ] {
        let points: Vec<&Record> = p
            .records
            .iter()
            .filter(|r| r.status == status)
            .enumerate()
            .filter(|(i, _)| i % stride == 0)
            .map(|(_, r)| r)
            .collect();
        chart.draw_series(points.iter().map(|r| {
            let at = (r.call_us as f64 / 1e6, latency_ms(r));
            let style = colour.mix(0.75).filled();
            match r.f {
                Func::Get => EmptyElement::at(at) + Circle::new((0, 0), 2, style),
                Func::Put => EmptyElement::at(at) + Circle::new((0, 0), 3, style),
                Func::Cas => EmptyElement::at(at) + Circle::new((0, 0), 3, colour.stroke_width(1)),
            }
        }))?;
    }

    // The checker's counterexamples.
    let marked: std::collections::HashSet<u64> = p.marked.iter().copied().collect();
    let marked: Vec<&Record> = p
        .records
        .iter()
        .filter(|r| marked.contains(&r.id))
        .collect();
    chart.draw_series(marked.iter().map(|r| {
        Cross::new(
            (r.call_us as f64 / 1e6, latency_ms(r)),
            8,
            BLACK.stroke_width(3),
        )
    }))?;

    // The legend, in a strip of its own under the chart.
    let thinned = |name: &str, stride: usize| {
        if stride > 1 {
            format!("{name} (1 in {stride} drawn)")
        } else {
            name.to_string()
        }
    };
    let ok_label = thinned("ok", ok_stride);
    let failed_label = thinned("failed", failed_stride);
    let font = ("sans-serif", 13).into_font().color(&BLACK);
    let mut x = 70;
    let y = 14;
    for (colour, label) in [
        (OK, ok_label.as_str()),
        (FAILED, failed_label.as_str()),
        (UNKNOWN, "unknown"),
    ] {
        lower.draw(&Circle::new((x, y), 5, colour.filled()))?;
        lower.draw(&Text::new(label.to_string(), (x + 10, y - 7), font.clone()))?;
        x += 40 + 8 * label.len() as i32;
    }
    lower.draw(&Text::new(
        "dot: get, large dot: put, ring: CAS".to_string(),
        (x, y - 7),
        font.clone(),
    ))?;
    x += 290;
    lower.draw(&PathElement::new(
        vec![(x, y), (x + 14, y)],
        LEADER.stroke_width(2),
    ))?;
    lower.draw(&Text::new(
        "new leader (node, term)".to_string(),
        (x + 20, y - 7),
        font.clone(),
    ))?;
    x += 210;
    lower.draw(&Rectangle::new(
        [(x, y - 6), (x + 14, y + 6)],
        fault_colour(FaultKind::PartitionLeader).mix(0.3).filled(),
    ))?;
    lower.draw(&Text::new(
        "fault (label: kind, targets, recovery); lighter: until writes recover".to_string(),
        (x + 20, y - 7),
        font.clone(),
    ))?;
    x += 510;
    lower.draw(&Cross::new((x + 7, y), 5, BLACK.stroke_width(2)))?;
    lower.draw(&Text::new("violation".to_string(), (x + 20, y - 7), font))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_operations_faults_and_leaders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.svg");
        let mut records = Vec::new();
        for (i, status) in [Status::Ok, Status::Failed, Status::Unknown]
            .into_iter()
            .enumerate()
        {
            records.push(Record {
                id: i as u64 + 1,
                client: 0,
                node: 1,
                key: "k".into(),
                f: Func::Put,
                stale: false,
                fin: false,
                value: Some(1),
                expect: None,
                expect_index: None,
                index: None,
                result: None,
                call_us: 1_000_000 * (i as u64 + 1),
                ret_us: 1_000_000 * (i as u64 + 1) + 5_000,
                status,
                error: None,
            });
        }
        let faults = [Applied {
            n: 1,
            kind: FaultKind::PartitionLeader,
            targets: vec![1],
            detail: "leader node 1 isolated".into(),
            start_us: 1_500_000,
            end_us: 2_500_000,
            recovery_ms: Some(12),
            problems: Vec::new(),
        }];
        write(
            &path,
            &Picture {
                title: "chaos: test",
                records: &records,
                faults: &faults,
                leaders: &[(2_000_000, 2, 3)],
                marked: &[2],
                run_s: 4.0,
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("partition-leader [1] (12 ms)"));
        assert!(svg.contains("n2 t3"));
        for legend in ["ok", "failed", "unknown", "violation"] {
            assert!(
                svg.contains(&format!("\n{legend}\n")),
                "legend {legend} missing"
            );
        }
    }
}
