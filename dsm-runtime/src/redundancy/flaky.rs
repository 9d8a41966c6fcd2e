//! Test support: in-memory nodes that go down and come back on demand.

use crate::effects::memory::MemoryNodes;
use crate::transport::{NodeId, NodeInfo, ReadOp, Session, TransportError, WriteOp};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// In-memory nodes where single nodes can go down and come back, logging every node
/// each operation reaches.
#[derive(Clone, Default)]
pub struct Flaky {
    pub nodes: MemoryNodes,
    down: Arc<Mutex<HashSet<u16>>>,
    pub contacted: Arc<Mutex<Vec<u16>>>,
}

impl Flaky {
    fn reach(&self, node: NodeId) -> Result<(), TransportError> {
        self.contacted.lock().unwrap().push(node.0);
        if self.down.lock().unwrap().contains(&node.0) {
            return Err(TransportError::Timeout {
                node,
                addr: "127.0.0.1:1".parse().unwrap(),
                timeout_ms: 1,
            });
        }
        Ok(())
    }
    pub fn set_down(&self, node: u16, down: bool) {
        let mut d = self.down.lock().unwrap();
        if down {
            d.insert(node);
        } else {
            d.remove(&node);
        }
    }
}

impl Session for Flaky {
    fn read_batch(&mut self, ops: &mut [ReadOp<'_>]) -> Result<(), TransportError> {
        for op in ops.iter() {
            self.reach(op.node)?;
        }
        self.nodes.read_batch(ops)
    }
    fn write_batch(&mut self, ops: &[WriteOp<'_>]) -> Result<(), TransportError> {
        for op in ops {
            self.reach(op.node)?;
        }
        self.nodes.write_batch(ops)
    }
    fn compare_and_swap(
        &mut self,
        node: NodeId,
        offset: u64,
        expected: u64,
        new: u64,
    ) -> Result<u64, TransportError> {
        self.reach(node)?;
        self.nodes.compare_and_swap(node, offset, expected, new)
    }
    fn call(&mut self, node: NodeId, msg: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.reach(node)?;
        self.nodes.call(node, msg)
    }
}

pub fn infos(n: u16) -> Vec<NodeInfo> {
    (0..n)
        .map(|i| NodeInfo {
            id: NodeId(i),
            addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
            region_bytes: 1 << 20,
        })
        .collect()
}
