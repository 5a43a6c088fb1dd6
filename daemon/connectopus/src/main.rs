//! `connectopus`: the mesh node daemon and its command-line tool.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("connectopus: the node is not built yet")
}
