//! The PNG bar chart: one panel per headline metric, one bar per subject (median), with a
//! whisker from the minimum to the maximum repetition. Drawn with plotters' bitmap backend
//! and the DejaVu Sans font compiled into the binary, so it needs no system fonts or display.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use connectopus_tests::LinkKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use crate::report::{fmt_num, summary};
use crate::subjects::Kind;
use crate::{Run, Status, SubjectResult};

/// The panels: metric key and title.
const PANELS: &[(&str, &str)] = &[
    ("tcp1_mbps", "TCP, 1 stream: Mbit/s"),
    ("tcp4_mbps", "TCP, 4 streams: Mbit/s"),
    (
        "tcp1_mbit_per_cpu_s",
        "TCP, 1 stream: Mbit per node CPU-second",
    ),
    ("udp1400_rx_kpps", "UDP, 1,400 B packets: received kpps"),
    ("udp64_rx_kpps", "UDP, 64 B packets: received kpps"),
    ("ping_p50_us", "Ping p50: µs (lower is better)"),
];

const FONT: &str = "sans-serif";

fn register_fonts() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .and_then(|()| register_font(FONT, FontStyle::Bold, dejavu::sans::bold()))
            .map_err(|_| anyhow!("the bundled DejaVu Sans font did not load"));
    });
    result
}

fn colour(kind: Kind) -> RGBColor {
    match kind {
        Kind::Raw => RGBColor(140, 140, 140),
        Kind::Connectopus(LinkKind::DtlsPsk | LinkKind::DtlsCert) => RGBColor(31, 119, 180),
        Kind::Connectopus(LinkKind::Tcp) => RGBColor(106, 61, 154),
        Kind::Connectopus(LinkKind::TcpTls) => RGBColor(23, 160, 190),
        Kind::Connectopus(LinkKind::Udp) => RGBColor(188, 189, 34),
        Kind::ConnectopusUdpEbpf => RGBColor(140, 86, 75),
        Kind::ConnectopusDtlsCpuLocal => RGBColor(158, 218, 229),
        Kind::WireguardGo => RGBColor(255, 127, 14),
        Kind::Boringtun => RGBColor(214, 39, 40),
        Kind::Nebula => RGBColor(44, 160, 44),
    }
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// Draws the chart of `run` into the PNG file `path`.
pub fn draw(run: &Run, path: &Path) -> Result<()> {
    register_fonts()?;
    let rows: Vec<&SubjectResult> = run
        .results
        .iter()
        .filter(|r| matches!(r.status, Status::Ran))
        .collect();
    let row_px = 30u32;
    let panel_h = 60 + row_px * rows.len().max(1) as u32;
    let (width, height) = (1800u32, 90 + 2 * panel_h);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let m = &run.machine;
    let title = format!(
        "Connectopus end-to-end benchmark ({} mode, {} repetition(s), median with min–max)",
        run.options.mode(),
        run.options.reps
    );
    let subtitle = format!(
        "{} · {}, {} CPUs, kernel {} · load {} · left → right over a veth pair (pair/) or through a forwarding middle node (line/) · a bar with a white break is off the scale",
        m.date, m.cpu_model, m.cores, m.kernel, m.load_before
    );
    root.draw(&Text::new(
        title,
        (20, 14),
        (FONT, 26, FontStyle::Bold).into_font().color(&BLACK),
    ))
    .map_err(err)?;
    root.draw(&Text::new(
        subtitle,
        (20, 50),
        (FONT, 16).into_font().color(&RGBColor(80, 80, 80)),
    ))
    .map_err(err)?;
    let (_, body) = root.split_vertically(85);
    let panels = body.split_evenly((2, 3));
    for (panel, (key, title)) in panels.iter().zip(PANELS) {
        draw_panel(panel, key, title, &rows)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    key: &str,
    title: &str,
    rows: &[&SubjectResult],
) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    area.draw(&Rectangle::new(
        [(4, 4), (w - 4, h - 4)],
        RGBColor(220, 220, 220).stroke_width(1),
    ))
    .map_err(err)?;
    area.draw(&Text::new(
        title.to_owned(),
        (14, 14),
        (FONT, 18, FontStyle::Bold).into_font().color(&BLACK),
    ))
    .map_err(err)?;
    let label_w = 200;
    let x0 = label_w + 10;
    let x1 = w - 90;
    let top = 48;
    let row_h = ((h - top - 12) / rows.len().max(1) as i32).max(8);
    let bar_h = (row_h * 2 / 3).max(4);
    let summaries: Vec<_> = rows.iter().map(|r| summary(r, key)).collect();
    let largest = |raw: bool| {
        rows.iter()
            .zip(&summaries)
            .filter(|(r, _)| (r.subject.kind == Kind::Raw) == raw)
            .filter_map(|(_, s)| s.map(|s| if raw { s.median } else { s.max }))
            .fold(0.0f64, f64::max)
    };
    // The raw veth can be 20 times faster than any tunnel: rather than squash the tunnels'
    // bars, cut its bars at the edge and mark them (the value is still printed).
    let (tunnels, raw) = (largest(false), largest(true));
    let max = if tunnels > 0.0 && raw > 3.0 * tunnels {
        tunnels * 1.1
    } else {
        summaries
            .iter()
            .flatten()
            .map(|s| s.max)
            .fold(0.0f64, f64::max)
    };
    let scale = if max > 0.0 {
        f64::from(x1 - x0) / max
    } else {
        0.0
    };
    let label_style = (FONT, 15)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    let value_style = (FONT, 14)
        .into_font()
        .color(&RGBColor(60, 60, 60))
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (row, s)) in rows.iter().zip(&summaries).enumerate() {
        let y = top + i as i32 * row_h;
        let mid = y + bar_h / 2;
        area.draw(&Text::new(
            row.subject.id(),
            (label_w, mid),
            label_style.clone(),
        ))
        .map_err(err)?;
        let Some(s) = s else {
            area.draw(&Text::new("–", (x0 + 4, mid), value_style.clone()))
                .map_err(err)?;
            continue;
        };
        let px = |v: f64| x0 + (v.min(max) * scale).round() as i32;
        area.draw(&Rectangle::new(
            [(x0, y), (px(s.median).max(x0 + 1), y + bar_h)],
            colour(row.subject.kind).filled(),
        ))
        .map_err(err)?;
        if s.median > max {
            // Off the scale: a break mark near the end of the bar.
            for dx in [-24, -16] {
                area.draw(&PathElement::new(
                    vec![(x1 + dx - 4, y + bar_h + 1), (x1 + dx + 4, y - 1)],
                    WHITE.stroke_width(3),
                ))
                .map_err(err)?;
            }
        } else if s.n > 1 && s.max > s.min {
            let whisker = BLACK.stroke_width(2);
            area.draw(&PathElement::new(
                vec![(px(s.min), mid), (px(s.max), mid)],
                whisker,
            ))
            .map_err(err)?;
            for x in [px(s.min), px(s.max)] {
                area.draw(&PathElement::new(
                    vec![(x, mid - bar_h / 3), (x, mid + bar_h / 3)],
                    whisker,
                ))
                .map_err(err)?;
            }
        }
        area.draw(&Text::new(
            fmt_num(s.median),
            (px(s.max.max(s.median)) + 6, mid),
            value_style.clone(),
        ))
        .map_err(err)?;
    }
    let axis = RGBColor(120, 120, 120).stroke_width(1);
    area.draw(&PathElement::new(
        vec![(x0, top - 4), (x0, top + row_h * rows.len() as i32)],
        axis,
    ))
    .map_err(err)?;
    Ok(())
}
