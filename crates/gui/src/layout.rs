//! Where nodes go and what the view shows: the layered (rank) layout for graphs without a usable
//! layout, the overlap check that decides it on open, and the fit / zoom transforms.
//!
//! Everything works on node rectangles in graph coordinates as the canvas measured them in the
//! last frame (egui-snarl lays nodes out at graph scale and draws them through a layer transform),
//! so sizes are the nodes' real ones, not guesses.

use std::collections::{HashMap, HashSet};

use egui::emath::TSTransform;
use egui::{Pos2, Rect, Vec2};

/// Horizontal gap between rank columns and vertical gap between nodes of a column, graph units.
pub const COLUMN_GAP: f32 = 48.0;
pub const ROW_GAP: f32 = 24.0;
/// Node text height, in screen pixels, that a workflow should open at when the view allows it.
pub const READABLE_TEXT: f32 = 12.0;
/// Space kept free around the graph when it is fitted into the view, screen pixels.
pub const FIT_MARGIN: f32 = 24.0;

/// A view change the canvas applies at its next frame (once every node has been measured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewCommand {
    /// A document was just opened: arrange it when its positions overlap (or it had none), then
    /// fit it into the view at no more than 100%.
    Open,
    /// Fit the whole graph into the view, at no more than 100%.
    FitAll,
    /// Fit the selected nodes into the view, at no more than 100%.
    FitSelection,
    /// 100% zoom, keeping the view's centre where it is.
    Zoom100,
    /// Lay the graph out by rank, then fit it.
    Arrange,
}

/// Whether any two rectangles overlap by more than `tolerance` in both directions.
pub fn any_overlap(rects: &[Rect], tolerance: f32) -> bool {
    for (i, a) in rects.iter().enumerate() {
        for b in &rects[i + 1..] {
            let w = a.max.x.min(b.max.x) - a.min.x.max(b.min.x);
            let h = a.max.y.min(b.max.y) - a.min.y.max(b.min.y);
            if w > tolerance && h > tolerance {
                return true;
            }
        }
    }
    false
}

/// The bounding box of `rects` (`Rect::NOTHING` when empty).
pub fn bounds(rects: impl IntoIterator<Item = Rect>) -> Rect {
    rects.into_iter().fold(Rect::NOTHING, |acc, r| acc.union(r))
}

/// The transform that shows `content` (graph coordinates) centred in `viewport` (screen), as large
/// as fits with [`FIT_MARGIN`] around it but never above `max_scale` (1.0: text at its normal
/// size) nor below `min_scale`.
pub fn fit(content: Rect, viewport: Rect, min_scale: f32, max_scale: f32) -> TSTransform {
    let avail = (viewport.size() - Vec2::splat(2.0 * FIT_MARGIN)).max(Vec2::splat(1.0));
    let size = content.size().max(Vec2::splat(1.0));
    let scaling = (avail.x / size.x)
        .min(avail.y / size.y)
        .clamp(min_scale, max_scale);
    centred(content.center(), viewport.center(), scaling)
}

/// The transform with `scaling` that puts graph point `at` on screen point `on`.
pub fn centred(at: Pos2, on: Pos2, scaling: f32) -> TSTransform {
    TSTransform {
        scaling,
        translation: on.to_vec2() - at.to_vec2() * scaling,
    }
}

/// Positions for a layered layout, data flowing left to right: a node's rank is one more than its
/// highest-ranked input's, and a node without inputs sits just left of its first consumer (so a
/// loader stands next to what it feeds, not in a far-left column). Within a column nodes are
/// ordered by the mean row of their inputs and stacked with [`ROW_GAP`]; columns are as wide as
/// their widest node plus [`COLUMN_GAP`]. A column taller than `max_height` continues in a second
/// sub-column, and when the columns together are much wider than `aspect` (the view's size) they
/// wrap into bands stacked downwards. `sizes`: every node's measured size; `edges`: (from, to)
/// pairs; the top-left is `origin`. Cycles (which validation rejects) cannot loop: ranks are
/// capped.
pub fn layered<K: Copy + Eq + std::hash::Hash + Ord>(
    sizes: &[(K, Vec2)],
    edges: &[(K, K)],
    origin: Pos2,
    max_height: f32,
    aspect: Vec2,
) -> HashMap<K, Pos2> {
    let n = sizes.len();
    let index: HashMap<K, usize> = sizes
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (*k, i))
        .collect();
    let mut preds = vec![Vec::new(); n];
    let mut succs = vec![Vec::new(); n];
    let mut seen = HashSet::new();
    for &(a, b) in edges {
        if let (Some(&i), Some(&j)) = (index.get(&a), index.get(&b)) {
            if i != j && seen.insert((i, j)) {
                preds[j].push(i);
                succs[i].push(j);
            }
        }
    }
    // Longest path from the sources (Bellman-style relaxation, at most n rounds).
    let mut rank = vec![0usize; n];
    for _ in 0..n {
        let mut changed = false;
        for j in 0..n {
            for &i in &preds[j] {
                if rank[i] + 1 > rank[j] && rank[i] < n {
                    rank[j] = rank[i] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    // Sources move right, next to their nearest consumer.
    for i in 0..n {
        if preds[i].is_empty() {
            if let Some(min) = succs[i].iter().map(|&j| rank[j]).min() {
                rank[i] = min.saturating_sub(1).max(rank[i]);
            }
        }
    }
    let columns = rank.iter().copied().max().map_or(0, |m| m + 1);
    let mut by_rank: Vec<Vec<usize>> = vec![Vec::new(); columns];
    for i in 0..n {
        by_rank[rank[i]].push(i);
    }
    // Order each column by the mean row of its inputs (sources keep file order, then by their
    // consumer's row on a second sweep from the right).
    let mut row = vec![0f32; n];
    for col in by_rank.iter_mut() {
        col.sort_by(|&a, &b| {
            let key = |i: usize| {
                if preds[i].is_empty() {
                    i as f32
                } else {
                    preds[i].iter().map(|&p| row[p]).sum::<f32>() / preds[i].len() as f32
                }
            };
            key(a).total_cmp(&key(b)).then(a.cmp(&b))
        });
        for (r, &i) in col.iter().enumerate() {
            row[i] = r as f32;
        }
    }
    // Place each column (with its sub-columns) at x = 0 first, recording its extent. Columns no
    // taller than `max_height`, or shorter ones (more sub-columns, wider and lower) when that
    // lets the whole show larger in `aspect`.
    let mut best: Option<(f32, Vec<ColumnItems<K>>, Vec<Vec2>)> = None;
    for fraction in [1.0, 0.75, 0.5, 0.35] {
        let columns_placed = place_columns(&by_rank, sizes, max_height * fraction);
        let extents: Vec<Vec2> = columns_placed.iter().map(|c| c.1).collect();
        let (offsets, size) = bands(&extents, best_band_width(&extents, aspect));
        let scale = (aspect.x / size.x.max(1.0)).min(aspect.y / size.y.max(1.0));
        if best.as_ref().is_none_or(|b| scale > b.0 * 1.02) {
            best = Some((scale, columns_placed, offsets));
        }
    }
    let (_, columns_placed, offsets) = best.unwrap_or_default();
    let mut out = HashMap::new();
    for ((items, _), at) in columns_placed.iter().zip(offsets) {
        for (k, off) in items {
            out.insert(*k, origin + at + *off);
        }
    }
    out
}

/// One column's nodes with their offsets inside it, and the column's size.
type ColumnItems<K> = (Vec<(K, Vec2)>, Vec2);

/// Each rank's nodes stacked from the top with [`ROW_GAP`]; a column taller than `max_height`
/// continues in a sub-column to its right.
fn place_columns<K: Copy>(
    by_rank: &[Vec<usize>],
    sizes: &[(K, Vec2)],
    max_height: f32,
) -> Vec<ColumnItems<K>> {
    let mut columns_placed = Vec::with_capacity(by_rank.len());
    for col in by_rank {
        let mut y = 0f32;
        let mut width = 0f32;
        let mut sub_x = 0f32;
        let mut height = 0f32;
        let mut items = Vec::new();
        for &i in col {
            let size = sizes[i].1;
            if y > 0.0 && y + size.y > max_height {
                sub_x += width + COLUMN_GAP;
                width = 0.0;
                y = 0.0;
            }
            items.push((sizes[i].0, Vec2::new(sub_x, y)));
            y += size.y + ROW_GAP;
            height = height.max(y - ROW_GAP);
            width = width.max(size.x);
        }
        columns_placed.push((items, Vec2::new(sub_x + width, height)));
    }
    columns_placed
}

/// Columns (`extents`: each one's width and height) placed left to right in bands of at most
/// `band_width` (a column wider than that gets a band of its own), the bands stacked downwards:
/// each column's offset, and the size of the whole.
fn bands(extents: &[Vec2], band_width: f32) -> (Vec<Vec2>, Vec2) {
    let (mut x, mut y, mut band_h, mut width) = (0f32, 0f32, 0f32, 0f32);
    let mut offsets = Vec::with_capacity(extents.len());
    for e in extents {
        if x > 0.0 && x + e.x > band_width + 1.0 {
            width = width.max(x - COLUMN_GAP);
            y += band_h + 2.0 * ROW_GAP;
            x = 0.0;
            band_h = 0.0;
        }
        offsets.push(Vec2::new(x, y));
        x += e.x + COLUMN_GAP;
        band_h = band_h.max(e.y);
    }
    (offsets, Vec2::new(width.max(x - COLUMN_GAP), y + band_h))
}

/// The band width for [`bands`] that shows the whole largest in a view of `aspect` (width,
/// height; only the ratio counts): the total width split in 1, 2, … bands, one band unless
/// wrapping gains more than 5%.
fn best_band_width(extents: &[Vec2], aspect: Vec2) -> f32 {
    let total: f32 = extents.iter().map(|e| e.x + COLUMN_GAP).sum();
    let mut best = (0f32, total);
    for n in 1..=extents.len().max(1) {
        let band_width = total / n as f32;
        let (_, size) = bands(extents, band_width);
        let scale = (aspect.x / size.x.max(1.0)).min(aspect.y / size.y.max(1.0));
        if scale > best.0 * 1.05 {
            best = (scale, band_width);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect_of(pos: &HashMap<u32, Pos2>, sizes: &[(u32, Vec2)], k: u32) -> Rect {
        let size = sizes.iter().find(|(i, _)| *i == k).unwrap().1;
        Rect::from_min_size(pos[&k], size)
    }

    #[test]
    fn layered_puts_data_flow_left_to_right_without_overlaps() {
        // a chain 0 → 1 → 2, a source 3 feeding 2, and 4 alone.
        let sizes: Vec<(u32, Vec2)> = (0..5)
            .map(|i| (i, Vec2::new(100.0 + 10.0 * i as f32, 60.0 + 5.0 * i as f32)))
            .collect();
        let edges = [(0, 1), (1, 2), (3, 2)];
        let pos = layered(
            &sizes,
            &edges,
            Pos2::ZERO,
            1000.0,
            Vec2::new(4000.0, 1000.0),
        );
        assert_eq!(pos.len(), 5);
        assert!(pos[&0].x < pos[&1].x && pos[&1].x < pos[&2].x);
        // The source 3 sits in the column just before its consumer, with node 1.
        assert_eq!(pos[&3].x, pos[&1].x);
        let rects: Vec<Rect> = (0..5).map(|k| rect_of(&pos, &sizes, k)).collect();
        assert!(!any_overlap(&rects, 0.0));
    }

    #[test]
    fn tall_columns_wrap_and_cycles_terminate() {
        let sizes: Vec<(u32, Vec2)> = (0..12).map(|i| (i, Vec2::new(80.0, 100.0))).collect();
        // 0 feeds 1..=10; 11 ↔ 0 a cycle.
        let mut edges: Vec<(u32, u32)> = (1..=10).map(|j| (0, j)).collect();
        edges.push((11, 0));
        edges.push((0, 11));
        let pos = layered(&sizes, &edges, Pos2::ZERO, 400.0, Vec2::new(4000.0, 400.0));
        let rects: Vec<Rect> = (0..12).map(|k| rect_of(&pos, &sizes, k)).collect();
        assert!(!any_overlap(&rects, 0.0));
        let b = bounds(rects.iter().copied());
        assert!(b.height() <= 400.0 + 100.0, "{b:?}");
    }

    #[test]
    fn fit_never_magnifies_past_100_percent_and_centres() {
        let view = Rect::from_min_size(Pos2::ZERO, Vec2::new(1600.0, 1000.0));
        let small = Rect::from_min_size(Pos2::new(10.0, 10.0), Vec2::new(200.0, 100.0));
        let t = fit(small, view, 0.2, 1.0);
        assert_eq!(t.scaling, 1.0);
        assert!((t * small.center() - view.center()).length() < 1e-3);
        let big = Rect::from_min_size(Pos2::ZERO, Vec2::new(3200.0, 500.0));
        let t = fit(big, view, 0.2, 1.0);
        assert!(t.scaling < 0.5 && view.contains_rect(t * big));
        assert!(any_overlap(
            &[small, small.translate(Vec2::new(5.0, 5.0))],
            1.0
        ));
    }
}
