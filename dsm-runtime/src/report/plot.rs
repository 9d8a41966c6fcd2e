//! Drawing a [`Chart`] as SVG with plotters; the page embeds the SVG, so it needs no
//! script and no network.

use super::series::Chart;
use plotters::prelude::*;

/// Size of each plot in pixels (two fit side by side on a 1280-pixel screen).
const SIZE: (u32, u32) = (600, 300);

/// The chart as an SVG document; `Err` carries plotters' message.
pub fn svg(chart: &Chart) -> Result<String, String> {
    let mut out = String::new();
    draw(chart, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn draw(chart: &Chart, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    // Headroom above the highest point for the legend (a line each); a flat zero line
    // still gets a visible axis.
    let headroom = 1.1 + 0.12 * chart.series.len() as f64;
    let y_top = if y_max > 0.0 { y_max * headroom } else { 1.0 };
    let mut c = ChartBuilder::on(&root)
        .caption(chart.title, ("sans-serif", 17))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(58)
        .build_cartesian_2d(0f64..x_max, 0f64..y_top)?;
    c.configure_mesh()
        .x_desc("seconds since start")
        .y_desc(chart.y_label)
        .y_label_formatter(&|v| compact(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(
            LineSeries::new(s.points.iter().copied(), color.stroke_width(2)).point_size(2),
        )?
        .label(s.name.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    if !chart.series.is_empty() {
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// An axis label short enough for the label area: 1.5M, 250k, 12, 0.5.
fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::series::Series;

    #[test]
    fn every_point_is_drawn() {
        let chart = Chart {
            id: "t",
            title: "T",
            y_label: "y",
            series: vec![Series {
                name: "a & b".into(),
                points: vec![(1.0, 2.0), (2.0, 3.0), (3.0, 1.0)],
            }],
        };
        let svg = svg(&chart).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        assert!(svg.contains("a &amp; b"), "labels are escaped");
    }

    #[test]
    fn axis_labels_are_short() {
        let labels: Vec<String> = [2.5e6, 25_000.0, 1500.0, 12.0, 0.0, 0.3]
            .into_iter()
            .map(compact)
            .collect();
        assert_eq!(labels, ["2.5M", "25k", "1500", "12", "0", "0.3"]);
    }
}
