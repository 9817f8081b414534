//! A small binary codec for journal records: fixed-width big-endian integers and
//! length-prefixed byte strings. Decoding validates every length and tag, so a corrupt record
//! is an [`Error::Corruption`], never a panic.

use concord_storage::partitioner::Token;

use crate::error::{Error, Result};
use crate::timestamp::{Ballot, Epoch, NodeId, Timestamp, TxnId};
use crate::txn::{Deps, Key, Writes};

/// Appends encoded values to a buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    pub buf: Vec<u8>,
}

impl Encoder {
    pub fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }
    pub fn u16(&mut self, value: u16) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }
    pub fn u32(&mut self, value: u32) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }
    pub fn u64(&mut self, value: u64) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }
    pub fn i64(&mut self, value: i64) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }
    pub fn bytes(&mut self, value: &[u8]) {
        self.u32(value.len() as u32);
        self.buf.extend_from_slice(value);
    }
    pub fn timestamp(&mut self, value: Timestamp) {
        self.u64(value.epoch.0);
        self.u64(value.hlc);
        self.u16(value.flags);
        self.u32(value.node.0);
    }
    pub fn txn_id(&mut self, value: TxnId) {
        self.timestamp(value.timestamp());
    }
    pub fn ballot(&mut self, value: Ballot) {
        self.timestamp(value.0);
    }
    pub fn key(&mut self, key: &Key) {
        self.i64(key.token.0);
        self.bytes(&key.partition);
    }
    pub fn option_bytes(&mut self, value: Option<&[u8]>) {
        match value {
            None => self.u8(0),
            Some(bytes) => {
                self.u8(1);
                self.bytes(bytes);
            }
        }
    }
    pub fn deps(&mut self, deps: &Deps) {
        self.u32(deps.pair_count() as u32);
        for (txn_id, key) in deps.iter() {
            self.txn_id(txn_id);
            self.key(key);
        }
    }
    pub fn writes(&mut self, writes: &Writes) {
        self.u32(writes.len() as u32);
        for (key, value) in writes {
            self.key(key);
            self.option_bytes(value.as_deref());
        }
    }
}

/// Reads values back, validating as it goes.
#[derive(Debug)]
pub struct Decoder<'a> {
    input: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub fn new(input: &'a [u8]) -> Decoder<'a> {
        Decoder { input }
    }

    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.input.len() < n {
            return Err(Error::Corruption(format!(
                "record truncated: need {n} bytes, have {}",
                self.input.len()
            )));
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }
    pub fn timestamp(&mut self) -> Result<Timestamp> {
        Ok(Timestamp {
            epoch: Epoch(self.u64()?),
            hlc: self.u64()?,
            flags: self.u16()?,
            node: NodeId(self.u32()?),
        })
    }
    pub fn txn_id(&mut self) -> Result<TxnId> {
        let timestamp = self.timestamp()?;
        TxnId::from_timestamp(timestamp)
            .ok_or_else(|| Error::Corruption(format!("bad txn id flags in {timestamp}")))
    }
    pub fn ballot(&mut self) -> Result<Ballot> {
        Ok(Ballot(self.timestamp()?))
    }
    pub fn key(&mut self) -> Result<Key> {
        Ok(Key {
            token: Token(self.i64()?),
            partition: self.bytes()?,
        })
    }
    pub fn option_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            tag => Err(Error::Corruption(format!("bad option tag {tag}"))),
        }
    }
    pub fn deps(&mut self) -> Result<Deps> {
        let len = self.u32()?;
        let mut deps = Deps::new();
        for _ in 0..len {
            let txn_id = self.txn_id()?;
            deps.insert(txn_id, self.key()?);
        }
        Ok(deps)
    }
    pub fn writes(&mut self) -> Result<Writes> {
        let len = self.u32()?;
        let mut writes = Writes::new();
        for _ in 0..len {
            let key = self.key()?;
            writes.insert(key, self.option_bytes()?);
        }
        Ok(writes)
    }
}
