//! An in-memory stand-in for a cluster's nodes, for unit tests of code that talks to
//! nodes through a [`Session`] (the slot table, the pool's claims): every node's region is
//! a map of 8-byte words and of written bytes, with the same bounds and alignment checks.

use super::{check_cas_alignment, NodeId, ReadOp, Session, TransportError, WriteOp};
use std::collections::HashMap;

/// Nodes whose regions hold `region_bytes` each, all in this process.
#[derive(Debug, Default)]
pub struct MemNodes {
    region_bytes: u64,
    words: Vec<HashMap<u64, u64>>,
    bytes: Vec<HashMap<u64, u8>>,
}

impl MemNodes {
    /// `nodes` empty regions of `region_bytes`.
    pub fn new(nodes: usize, region_bytes: u64) -> MemNodes {
        MemNodes {
            region_bytes,
            words: vec![HashMap::new(); nodes],
            bytes: vec![HashMap::new(); nodes],
        }
    }

    fn check(
        &self,
        node: NodeId,
        op: &'static str,
        offset: u64,
        len: u64,
    ) -> Result<usize, TransportError> {
        let i = usize::from(node.0);
        if i >= self.words.len() {
            return Err(TransportError::UnknownNode(node));
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.region_bytes)
        {
            return Err(TransportError::Rejected {
                node,
                op,
                offset,
                detail: "outside its region".into(),
            });
        }
        Ok(i)
    }
}

impl Session for MemNodes {
    fn read_batch(&mut self, ops: &mut [ReadOp<'_>]) -> Result<(), TransportError> {
        for op in ops.iter() {
            self.check(op.node, "read", op.offset, op.buf.len() as u64)?;
        }
        for op in ops.iter_mut() {
            let bytes = &self.bytes[usize::from(op.node.0)];
            for (k, b) in op.buf.iter_mut().enumerate() {
                *b = bytes.get(&(op.offset + k as u64)).copied().unwrap_or(0);
            }
        }
        Ok(())
    }

    fn write_batch(&mut self, ops: &[WriteOp<'_>]) -> Result<(), TransportError> {
        for op in ops {
            self.check(op.node, "write", op.offset, op.data.len() as u64)?;
        }
        for op in ops {
            let bytes = &mut self.bytes[usize::from(op.node.0)];
            for (k, b) in op.data.iter().enumerate() {
                bytes.insert(op.offset + k as u64, *b);
            }
        }
        Ok(())
    }

    fn compare_and_swap(
        &mut self,
        node: NodeId,
        offset: u64,
        expected: u64,
        new: u64,
    ) -> Result<u64, TransportError> {
        check_cas_alignment(node, offset)?;
        let i = self.check(node, "compare-and-swap", offset, 8)?;
        let word = self.words[i].entry(offset).or_insert(0);
        let found = *word;
        if found == expected {
            *word = new;
        }
        Ok(found)
    }

    fn call(&mut self, _node: NodeId, msg: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(if msg == b"ping" {
            b"pong".to_vec()
        } else {
            Vec::new()
        })
    }
}
