//! The order in which Keras 3 runs a Functional model's calls, and the one side effect that
//! order decides: `MultiHeadAttention.call` removes the Keras mask of the tensors it is called
//! on (`backend.set_keras_mask(query | value | key, None)`, after reading them), so a layer that
//! Keras runs *after* it and that reads one of those tensors' masks implicitly — not through a
//! mask argument Keras recorded in the graph — sees none (another attention, a masked
//! `Multiply`, the mask a pass-through layer hands on). Which consumers run after the attention
//! follows Keras' traversal (`ops.function.map_graph`: a depth-first walk from the outputs,
//! then the calls by decreasing depth, each depth in the order the walk found them), not the
//! order of the config, so grucell computes that order here.

use std::collections::{HashMap, HashSet};

use crate::layers::model::{Node, TensorRef};

/// Each node's position in Keras' execution order (`ranks[i]` for `nodes[i]`); nodes the
/// outputs do not depend on come last, in their own order.
pub(crate) fn keras_ranks(nodes: &[Node], outputs: &[TensorRef]) -> Vec<usize> {
    let n = nodes.len();
    let pos: HashMap<(usize, usize), usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, nd)| ((nd.layer, nd.call), i))
        .collect();
    // `node.input_tensors`: the positional arguments, then the keyword arguments by key
    // (`initial_state`, `mask`), as `tree.flatten` orders a call's arguments.
    let parents: Vec<Vec<usize>> = nodes
        .iter()
        .map(|nd| {
            nd.inputs()
                .filter_map(|r| pos.get(&(r.layer, r.node)).copied())
                .collect()
        })
        .collect();
    // `_build_map`: post-order depth-first walk from each output (an explicit stack: no
    // recursion depth for a file to exhaust).
    let mut finished = vec![false; n];
    let mut in_progress = vec![false; n];
    let mut walk = Vec::with_capacity(n);
    for out in outputs {
        let Some(&start) = pos.get(&(out.layer, out.node)) else {
            continue;
        };
        if finished[start] {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        in_progress[start] = true;
        while let Some(top) = stack.last_mut() {
            let (i, next) = *top;
            if let Some(&p) = parents[i].get(next) {
                top.1 += 1;
                if !finished[p] && !in_progress[p] {
                    in_progress[p] = true;
                    stack.push((p, 0));
                }
            } else {
                stack.pop();
                in_progress[i] = false;
                finished[i] = true;
                walk.push(i);
            }
        }
    }
    // `map_graph`: depths, in the insertion order of Python's dict.
    let mut depth: Vec<Option<usize>> = vec![None; n];
    let mut inserted = Vec::with_capacity(n);
    let mut layer_depth: HashMap<usize, usize> = HashMap::new();
    for &i in walk.iter().rev() {
        let own = *depth[i].get_or_insert_with(|| {
            inserted.push(i);
            0
        });
        let d = own.max(layer_depth.get(&nodes[i].layer).copied().unwrap_or(0));
        layer_depth.insert(nodes[i].layer, d);
        depth[i] = Some(d);
        for &p in &parents[i] {
            if !finished[p] {
                continue;
            }
            let prev = match depth[p] {
                Some(v) => v,
                None => {
                    inserted.push(p);
                    0
                }
            };
            depth[p] = Some(prev.max(d + 1));
        }
    }
    // Run by decreasing depth, each depth in insertion order (a stable sort).
    let mut order = inserted;
    order.sort_by_key(|&i| std::cmp::Reverse(depth[i].unwrap_or(0)));
    let mut ranks = vec![usize::MAX; n];
    for (r, &i) in order.iter().enumerate() {
        ranks[i] = r;
    }
    let unreached = ranks.iter_mut().filter(|r| **r == usize::MAX);
    for (next, r) in (order.len()..).zip(unreached) {
        *r = next;
    }
    ranks
}

/// Which calls see the mask of which argument removed by an earlier `MultiHeadAttention` call
/// (see the module documentation).
#[derive(Clone, Debug, Default)]
pub(crate) struct MaskClearing {
    /// `(call position, argument)` pairs whose mask is gone when that call runs.
    cleared: HashSet<(usize, TensorRef)>,
    /// Every argument of an attention call (the only tensors whose masks can go).
    watched: HashSet<TensorRef>,
}

impl MaskClearing {
    /// The plan for `nodes`, `attention[i]` telling whether `nodes[i]` is a
    /// `MultiHeadAttention` call; `None` when there is none.
    pub(crate) fn plan(nodes: &[Node], outputs: &[TensorRef], attention: &[bool]) -> Option<Self> {
        if !attention.iter().any(|a| *a) {
            return None;
        }
        let ranks = keras_ranks(nodes, outputs);
        let args: Vec<Vec<TensorRef>> = nodes.iter().map(|nd| nd.tensor_args().collect()).collect();
        let mut plan = MaskClearing::default();
        for m in (0..nodes.len()).filter(|&m| attention[m]) {
            for &r in &args[m] {
                plan.watched.insert(r);
                for (c, theirs) in args.iter().enumerate() {
                    if ranks[c] > ranks[m] && theirs.contains(&r) {
                        plan.cleared.insert((c, r));
                    }
                }
            }
        }
        Some(plan)
    }

    /// Whether call `c` sees argument `r` without its mask.
    pub(crate) fn is_cleared(&self, c: usize, r: TensorRef) -> bool {
        self.cleared.contains(&(c, r))
    }

    /// Whether `r`'s mask can be removed for some call.
    pub(crate) fn watches(&self, r: TensorRef) -> bool {
        self.watched.contains(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::attention::AttentionCall;
    use crate::layers::model::NodeArg;

    fn node(layer: usize, args: &[usize]) -> Node {
        Node {
            layer,
            call: 0,
            args: args
                .iter()
                .map(|&l| {
                    NodeArg::Tensor(TensorRef {
                        layer: l,
                        node: 0,
                        index: 0,
                    })
                })
                .collect(),
            initial_state: Vec::new(),
            mask: None,
            states_keep_mask: false,
            attention: AttentionCall::default(),
        }
    }

    fn out(layer: usize) -> TensorRef {
        TensorRef {
            layer,
            node: 0,
            index: 0,
        }
    }

    #[test]
    fn ranks_follow_keras_map_graph() {
        // input(0) -> gru(1); mha(2) on (1, 1); gru_b(3) on 1; outputs [mha, gru_b].
        // Keras' walk from mha then gru_b finds [0, 1, 2, 3]; depths: 2 and 3 at 0 — inserted
        // as 3 then 2 (reversed walk: gru_b first) — so gru_b runs before the attention.
        let nodes = vec![node(0, &[]), node(1, &[0]), node(2, &[1, 1]), node(3, &[1])];
        let ranks = keras_ranks(&nodes, &[out(2), out(3)]);
        assert_eq!(ranks, [0, 1, 3, 2]);
        let plan =
            MaskClearing::plan(&nodes, &[out(2), out(3)], &[false, false, true, false]).unwrap();
        assert!(!plan.is_cleared(3, out(1)));
        // With the outputs the other way round, the attention runs first and gru_b sees no mask.
        let plan =
            MaskClearing::plan(&nodes, &[out(3), out(2)], &[false, false, true, false]).unwrap();
        assert!(plan.is_cleared(3, out(1)));
        assert!(plan.watches(out(1)) && !plan.watches(out(0)));
        // A consumer of the attention's output always runs after it.
        let nodes = vec![
            node(0, &[]),
            node(1, &[0]),
            node(2, &[1, 1]),
            node(3, &[1, 2]),
        ];
        let plan = MaskClearing::plan(&nodes, &[out(3)], &[false, false, true, false]).unwrap();
        assert!(plan.is_cleared(3, out(1)));
        assert!(MaskClearing::plan(&nodes, &[out(3)], &[false; 4]).is_none());
    }
}
