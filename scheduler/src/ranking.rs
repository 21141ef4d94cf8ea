//! Which edges a client gets: pure, so it is tested without a server. For now
//! the `k` lowest-load edges, ties kept in configuration order; the load model
//! (measured load, power of two choices) replaces this in a later issue.

use crate::EdgeInfo;

/// The `k` least loaded edges, best first.
pub fn best_edges(edges: &[EdgeInfo], k: usize) -> Vec<EdgeInfo> {
    let mut ranked: Vec<&EdgeInfo> = edges.iter().collect();
    // Stable sort: equal loads keep their configured order. `total_cmp` gives
    // NaN a place at the end instead of panicking (config refuses NaN anyway).
    ranked.sort_by(|a, b| a.load.total_cmp(&b.load));
    ranked.into_iter().take(k).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(id: &str, load: f64) -> EdgeInfo {
        EdgeInfo {
            id: id.into(),
            ws: format!("ws://{id}/v1/ws"),
            quic: String::new(),
            load,
        }
    }

    fn ids(v: &[EdgeInfo]) -> Vec<&str> {
        v.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn lowest_load_first_and_at_most_k() {
        let edges = [
            edge("a", 0.9),
            edge("b", 0.1),
            edge("c", 0.5),
            edge("d", 0.1),
        ];
        assert_eq!(ids(&best_edges(&edges, 3)), ["b", "d", "c"]);
        assert_eq!(ids(&best_edges(&edges, 1)), ["b"]);
        assert_eq!(best_edges(&edges, 10).len(), 4);
        assert!(best_edges(&[], 3).is_empty());
    }
}
