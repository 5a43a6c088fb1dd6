//! A mesh is keyed everywhere or nowhere.
//!
//! A node with an `identity` checks every peer's key and every update's signature; a node
//! without one checks nothing: it accepts any hello and any unsigned update, so an attacker
//! with a link PSK gets in through it, and its memory of origins is whatever peers tell it. The
//! keyed nodes refuse its hellos (`no_key`), so such a mesh is also split. Mixed meshes are
//! refused, naming every node without an identity and the first node with one.

use super::{At, Ctx, in_source_order};
use crate::model::RawMesh;

pub(super) fn all_or_none(cx: &mut Ctx<'_>, raw: &RawMesh) {
    let nodes = in_source_order(cx.tree, &["nodes"], &raw.nodes);
    let Some((keyed, _)) = nodes.iter().find(|(_, n)| n.identity.is_some()) else {
        return;
    };
    let n_keyed = nodes.iter().filter(|(_, n)| n.identity.is_some()).count();
    let first = cx.loc(&["nodes", keyed, "identity"], At::Value);
    for (name, node) in &nodes {
        if node.identity.is_some() {
            continue;
        }
        let message = format!(
            "node {name} has no identity, but {n_keyed} node(s) of this mesh have one \
             (nodes.{keyed}.identity at {first}): the keyed nodes refuse {name}'s hellos, and \
             {name}, which checks no keys, would accept any peer and any unsigned update. \
             Give every node an identity (`connectopus identity new --id {name}`) or none"
        );
        cx.error(&["nodes", name], At::Key, message);
    }
}
