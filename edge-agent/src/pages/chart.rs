//! The status page's occupancy chart: the day's series of `GET /device/occupancy` drawn as
//! an inline SVG (no script, no external asset), tickets inside over the merchant-local day,
//! with the capacity as a dashed line. A pure function of the answer; every text in it is
//! escaped, and points whose time cannot be read are left out.

use stile_shared::api::VenueOccupancy;
use stile_shared::html::escape;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
const LEFT: f64 = 36.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;
/// Minutes of a day, and of one point of the series.
const DAY: f64 = 1440.0;
const SLOT: f64 = 5.0;

/// A point of the series as drawn: minute of the local day, and what it counts.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    minute: f64,
    entries: i64,
    exits: i64,
    inside: i64,
}

fn points(occupancy: &VenueOccupancy) -> Vec<Point> {
    use chrono::Timelike;
    let mut points: Vec<Point> = occupancy
        .series
        .iter()
        .filter_map(|p| {
            let at = chrono::DateTime::parse_from_rfc3339(&p.at).ok()?;
            Some(Point {
                minute: f64::from(at.time().num_seconds_from_midnight()) / 60.0,
                entries: p.entries,
                exits: p.exits,
                inside: p.inside,
            })
        })
        .collect();
    points.sort_by(|a, b| a.minute.total_cmp(&b.minute));
    points
}

/// The chart of one venue's day.
pub fn occupancy_svg(occupancy: &VenueOccupancy) -> String {
    let points = points(occupancy);
    let title = format!(
        "{} {}: {} inside, {} entries, {} exits",
        occupancy.name, occupancy.date, occupancy.inside, occupancy.entries, occupancy.exits
    );
    let highest = points
        .iter()
        .map(|p| p.inside)
        .chain(occupancy.capacity)
        .chain([occupancy.inside, 1])
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |minute: f64| LEFT + (minute.clamp(0.0, DAY) / DAY) * (WIDTH - LEFT - RIGHT);
    let y = |count: i64| {
        let count = (count.max(0) as f64).min(highest);
        HEIGHT - BOTTOM - (count / highest) * (HEIGHT - TOP - BOTTOM)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"occupancy-chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{label}\"><title>{label}</title>\
<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"#fff\" stroke=\"#e3e6ea\"/>",
        label = escape(&title),
        w = WIDTH - LEFT - RIGHT,
        h = HEIGHT - TOP - BOTTOM,
    );
    for hour in [0.0, 6.0, 12.0, 18.0, 24.0] {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#5f6368\">{hour:02}:00</text>",
            x(hour * 60.0),
            HEIGHT - 6.0
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#5f6368\">{}</text>\
<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#5f6368\">0</text>",
        LEFT - 4.0,
        TOP + 8.0,
        highest as i64,
        LEFT - 4.0,
        HEIGHT - BOTTOM,
    ));
    if let Some(capacity) = occupancy.capacity {
        svg.push_str(&format!(
            "<line id=\"capacity-line\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#c5221f\" stroke-dasharray=\"4 3\"/>",
            WIDTH - RIGHT,
            y = y(capacity),
        ));
    }
    match points.first() {
        None => svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#5f6368\">no passages today</text>",
            (WIDTH + LEFT) / 2.0,
            HEIGHT / 2.0
        )),
        Some(first) => {
            // The level before the first five minutes with a passage.
            let mut level = first.inside - first.entries + first.exits;
            let mut line = format!("{:.1},{:.1}", x(0.0), y(level));
            for point in &points {
                line.push_str(&format!(
                    " {:.1},{:.1} {:.1},{:.1}",
                    x(point.minute),
                    y(level),
                    x(point.minute + SLOT),
                    y(point.inside)
                ));
                level = point.inside;
            }
            svg.push_str(&format!(
                "<polyline id=\"inside-line\" fill=\"none\" stroke=\"#1a73e8\" stroke-width=\"2\" points=\"{line}\"/>"
            ));
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use stile_shared::api::OccupancyPoint;

    fn day(series: Vec<OccupancyPoint>) -> VenueOccupancy {
        VenueOccupancy {
            venue_code: "PARK".into(),
            name: "<乐园 & \"park\">".into(),
            inside: 3,
            capacity: Some(4),
            entries: 5,
            exits: 2,
            date: "2026-12-02".into(),
            series,
        }
    }

    fn point(at: &str, entries: i64, exits: i64, inside: i64) -> OccupancyPoint {
        OccupancyPoint {
            at: at.into(),
            entries,
            exits,
            inside,
        }
    }

    #[test]
    fn the_day_is_drawn_as_steps_under_the_capacity() {
        let svg = occupancy_svg(&day(vec![
            point("2026-12-02T12:00:00+08:00", 4, 0, 4),
            point("2026-12-02T06:00:00+08:00", 1, 0, 1),
            point("not a time", 9, 9, 9),
            point("2026-12-02T18:00:00+08:00", 0, 2, 3),
        ]));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(
            svg.contains("&lt;乐园 &amp; &quot;park&quot;&gt;"),
            "escaped: {svg}"
        );
        assert!(!svg.contains("<乐园"), "{svg}");
        assert!(svg.contains("id=\"capacity-line\""));
        // x: 36 + minute/1440 * 544; y: 138 - count/4 * 128.
        // From 0 at 00:00, to 1 by 06:05, to 4 (the top) by 12:05, to 3 by 18:05.
        let line = svg
            .split("points=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a polyline");
        assert_eq!(
            line, "36.0,138.0 172.0,138.0 173.9,106.0 308.0,106.0 309.9,10.0 444.0,10.0 445.9,42.0",
            "the unreadable point is left out, the rest in time order"
        );
    }

    #[test]
    fn a_day_without_passages_says_so() {
        let svg = occupancy_svg(&VenueOccupancy {
            capacity: None,
            ..day(Vec::new())
        });
        assert!(svg.contains("no passages today"));
        assert!(!svg.contains("capacity-line"));
    }
}
