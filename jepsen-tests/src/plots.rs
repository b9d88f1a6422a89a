//! Pictures of a run, like Jepsen's: `latency-raw.png` (every operation's latency against the
//! time it began, coloured by outcome, one marker per kind of operation) and `rate.png`
//! (completions per second of each kind and outcome). Both shade the windows in which a fault
//! was active, one colour per fault.
//!
//! Text is drawn with a TrueType font found on the machine (DejaVu Sans, Debian's
//! `fonts-dejavu-core`, or `WALLET_JEPSEN_FONT`); without one the pictures are skipped with a
//! message, since they are for people and the verdict never depends on them.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::history::{History, Kind, Op, Value};
use crate::nemesis::Event;

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
const SIZE: (u32, u32) = (1400, 700);

/// Registers a font for "sans-serif" once; false when none was found.
fn font_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        let custom = std::env::var("WALLET_JEPSEN_FONT").ok();
        let found = custom
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS)
            .find_map(|p| std::fs::read(p).ok());
        let Some(bytes) = found else {
            return false;
        };
        // plotters keeps registered fonts for the whole process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

/// One completed operation: when it began and ended (seconds), what it was, how it ended.
struct Completed {
    begin: f64,
    end: f64,
    f: &'static str,
    kind: Kind,
}

fn completed(history: &History) -> Vec<Completed> {
    let mut pending: BTreeMap<u64, &Op> = BTreeMap::new();
    let mut out = Vec::new();
    for op in &history.ops {
        if op.kind == Kind::Invoke {
            pending.insert(op.process, op);
            continue;
        }
        let Some(invoke) = pending.remove(&op.process) else {
            continue;
        };
        let f = match op.value {
            Value::Transfer { .. } => "transfer",
            Value::Read { .. } => "read",
            Value::Audit { .. } => "audit",
            Value::Authorize { .. } => "authorize",
            Value::Capture { .. } => "capture",
            Value::Void { .. } => "void",
            Value::Chain { .. } => "chain",
            Value::Final { .. } => continue,
        };
        out.push(Completed {
            begin: invoke.time as f64 / 1e9,
            end: op.time as f64 / 1e9,
            f,
            kind: op.kind,
        });
    }
    out
}

/// Fault windows (fault, from, to) in seconds; a fault still open at the end runs to `last`.
fn windows(events: &[Event], last: f64) -> Vec<(String, f64, f64)> {
    let mut open: BTreeMap<&str, f64> = BTreeMap::new();
    let mut out = Vec::new();
    for e in events {
        let t = e.time as f64 / 1e9;
        if e.start {
            open.insert(&e.fault, t);
        } else if let Some(from) = open.remove(e.fault.as_str()) {
            out.push((e.fault.clone(), from, t));
        }
    }
    out.extend(
        open.into_iter()
            .map(|(f, from)| (f.to_string(), from, last)),
    );
    out
}

fn fault_colour(fault: &str) -> RGBColor {
    match fault {
        "kill" => RGBColor(214, 39, 40),
        "pause" => RGBColor(255, 187, 0),
        "partition" => RGBColor(148, 103, 189),
        "clock" => RGBColor(31, 119, 180),
        "wipe" => RGBColor(44, 160, 44),
        "corrupt" => RGBColor(140, 86, 75),
        _ => RGBColor(127, 127, 127),
    }
}

fn outcome_colour(kind: Kind) -> RGBColor {
    match kind {
        Kind::Ok => RGBColor(44, 160, 44),
        Kind::Fail => RGBColor(214, 39, 40),
        _ => RGBColor(255, 127, 14),
    }
}

fn outcome_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Ok => "ok",
        Kind::Fail => "fail",
        Kind::Invoke => "invoke",
        Kind::Info => "info",
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Chart<'a, 'b, Y> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, Y>>;

/// Shades the fault windows across the whole height, with one legend entry per fault.
fn shade<Y>(
    chart: &mut Chart<'_, '_, Y>,
    windows: &[(String, f64, f64)],
    bottom: Y::ValueType,
    top: Y::ValueType,
) -> Result<(), String>
where
    Y: plotters::coord::ranged1d::Ranged,
    Y::ValueType: Clone + 'static,
{
    let mut faults: Vec<&str> = windows.iter().map(|w| w.0.as_str()).collect();
    faults.sort_unstable();
    faults.dedup();
    for fault in faults {
        let colour = fault_colour(fault);
        chart
            .draw_series(
                windows
                    .iter()
                    .filter(|w| w.0 == fault)
                    .map(|(_, from, to)| {
                        Rectangle::new(
                            [(*from, bottom.clone()), (*to, top.clone())],
                            colour.mix(0.18).filled(),
                        )
                    }),
            )
            .map_err(drawing_error)?
            .label(fault.to_string())
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(0.4).filled())
            });
    }
    Ok(())
}

/// plotters' errors, as the pictures report them.
fn drawing_error(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

/// A white picture and a chart on it with the common caption, margins and label areas.
fn builder<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
) -> Result<ChartBuilder<'a, 'b, BitMapBackend<'b>>, String> {
    area.fill(&WHITE).map_err(drawing_error)?;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    Ok(builder)
}

/// Axes with their descriptions, then the fault windows behind the data.
fn mesh<Y>(
    chart: &mut Chart<'_, '_, Y>,
    y_desc: &str,
    faults: &[(String, f64, f64)],
    bottom: f64,
    top: f64,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(drawing_error)?;
    shade(chart, faults, bottom, top)
}

/// The legend, then the file.
fn finish<'a, 'b: 'a, Y: Ranged>(
    chart: &mut Chart<'a, 'b, Y>,
    area: &Area<'b>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(drawing_error)?;
    area.present().map_err(drawing_error)
}

fn latency_raw(
    area: &Area,
    ops: &[Completed],
    faults: &[(String, f64, f64)],
    span: f64,
) -> Result<(), String> {
    let top = ops
        .iter()
        .map(|o| (o.end - o.begin) * 1e3)
        .fold(10.0f64, f64::max)
        * 1.5;
    let mut chart = builder(area, "latency-raw: every operation")?
        .build_cartesian_2d(0.0..span, (0.1f64..top).log_scale())
        .map_err(drawing_error)?;
    mesh(&mut chart, "latency (ms)", faults, 0.1, top)?;
    for f in ["transfer", "authorize", "capture", "void", "read", "audit"] {
        for kind in [Kind::Ok, Kind::Fail, Kind::Info] {
            let points: Vec<(f64, f64)> = ops
                .iter()
                .filter(|o| o.f == f && o.kind == kind)
                .map(|o| (o.begin, ((o.end - o.begin) * 1e3).max(0.1)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let colour = outcome_colour(kind);
            let drawn = match f {
                "transfer" => {
                    chart.draw_series(points.iter().map(|&p| Circle::new(p, 2, colour.filled())))
                }
                "read" => chart.draw_series(points.iter().map(|&p| Cross::new(p, 3, colour))),
                _ => chart.draw_series(
                    points
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 4, colour.filled())),
                ),
            };
            drawn
                .map_err(drawing_error)?
                .label(format!("{f} {}", outcome_name(kind)))
                .legend(move |(x, y)| match f {
                    "transfer" => Circle::new((x, y), 3, colour.filled()).into_dyn(),
                    "read" => Cross::new((x, y), 3, colour).into_dyn(),
                    _ => TriangleMarker::new((x, y), 4, colour.filled()).into_dyn(),
                });
        }
    }
    finish(&mut chart, area)
}

fn rate(
    area: &Area,
    ops: &[Completed],
    faults: &[(String, f64, f64)],
    span: f64,
) -> Result<(), String> {
    let seconds = span.ceil() as usize + 1;
    let mut series: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for o in ops {
        let bucket = (o.end.max(0.0) as usize).min(seconds - 1);
        series
            .entry((o.f, outcome_name(o.kind)))
            .or_insert_with(|| vec![0.0; seconds])[bucket] += 1.0;
    }
    let top = series
        .values()
        .flat_map(|v| v.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = builder(area, "rate: completions per second")?
        .build_cartesian_2d(0.0..span, 0.0..top)
        .map_err(drawing_error)?;
    mesh(&mut chart, "operations / s", faults, 0.0, top)?;
    for (i, ((f, outcome), counts)) in series.into_iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                counts
                    .into_iter()
                    .enumerate()
                    .map(|(t, n)| (t as f64 + 0.5, n)),
                colour.stroke_width(2),
            ))
            .map_err(drawing_error)?
            .label(format!("{f} {outcome}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    finish(&mut chart, area)
}

/// Draws `latency-raw.png` and `rate.png` into `dir`; returns what was written, or why not.
pub fn draw(dir: &Path, history: &History, events: &[Event]) -> Result<Vec<String>, String> {
    if !font_ready() {
        return Err(
            "no TrueType font found (install fonts-dejavu-core or set WALLET_JEPSEN_FONT)".into(),
        );
    }
    let ops = completed(history);
    let span = ops
        .iter()
        .map(|o| o.end)
        .chain(events.iter().map(|e| e.time as f64 / 1e9))
        .fold(1.0f64, f64::max);
    let faults = windows(events, span);
    let mut written = Vec::new();
    for (name, plot) in [
        (
            "latency-raw.png",
            latency_raw
                as fn(&Area, &[Completed], &[(String, f64, f64)], f64) -> Result<(), String>,
        ),
        ("rate.png", rate),
    ] {
        let path = dir.join(name);
        let area = BitMapBackend::new(&path, SIZE).into_drawing_area();
        plot(&area, &ops, &faults, span)?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time_s: u64, fault: &str, start: bool) -> Event {
        Event {
            time: time_s * 1_000_000_000,
            fault: fault.into(),
            start,
            detail: String::new(),
        }
    }

    #[test]
    fn fault_windows_pair_starts_with_stops() {
        let events = [
            event(1, "kill", true),
            event(4, "kill", false),
            event(6, "partition", true),
        ];
        let w = windows(&events, 9.0);
        assert_eq!(
            w,
            vec![
                ("kill".to_string(), 1.0, 4.0),
                ("partition".to_string(), 6.0, 9.0)
            ]
        );
    }

    #[test]
    fn pictures_are_drawn_from_a_history() {
        if !font_ready() {
            eprintln!("no font on this machine: nothing to draw with");
            return;
        }
        let mut ops = Vec::new();
        for i in 0..200u64 {
            let value = Value::Transfer {
                id: format!("t{i}"),
                from: "a".into(),
                to: "b".into(),
                amount: 1,
            };
            let kind = [Kind::Ok, Kind::Fail, Kind::Info][(i % 3) as usize];
            for (k, t) in [
                (Kind::Invoke, i * 50_000_000),
                (kind, i * 50_000_000 + 3_000_000 * (i % 7 + 1)),
            ] {
                ops.push(Op {
                    index: ops.len() as u64,
                    process: i % 4,
                    time: t,
                    kind: k,
                    value: value.clone(),
                });
            }
        }
        let history = History { ops };
        let dir = std::env::temp_dir().join(format!("wallet-jepsen-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = draw(
            &dir,
            &history,
            &[event(2, "kill", true), event(5, "kill", false)],
        )
        .unwrap();
        assert_eq!(written.len(), 2);
        for path in written {
            let bytes = std::fs::read(&path).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "{path} is not a PNG");
            assert!(bytes.len() > 10_000, "{path} is nearly empty");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
