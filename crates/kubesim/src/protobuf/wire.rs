//! A minimal reader of the protobuf wire format: just what decoding by schema needs.

/// How a field's value is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

impl WireType {
    fn from_tag(tag: u64) -> Option<Self> {
        match tag & 7 {
            0 => Some(WireType::Varint),
            1 => Some(WireType::Fixed64),
            2 => Some(WireType::Len),
            5 => Some(WireType::Fixed32),
            // 3 and 4 are proto2 groups, which Kubernetes never uses.
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated message")]
    Truncated,
    #[error("malformed varint")]
    BadVarint,
    #[error("unsupported wire type {0}")]
    BadWireType(u64),
    #[error("invalid field number 0")]
    ZeroField,
}

/// Reads fields from one message's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.buf.len() < 10 {
            WireError::Truncated
        } else {
            WireError::BadVarint
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn fixed64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| WireError::Truncated)?,
        ))
    }

    pub fn fixed32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(
            b.try_into().map_err(|_| WireError::Truncated)?,
        ))
    }

    /// A length-delimited value: string, bytes, sub-message or packed list.
    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
        self.take(len)
    }

    /// The next field's number and wire type, or None at the end of the message.
    pub fn key(&mut self) -> Result<Option<(u32, WireType)>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let wire = WireType::from_tag(tag).ok_or(WireError::BadWireType(tag & 7))?;
        let number = u32::try_from(tag >> 3).map_err(|_| WireError::BadVarint)?;
        if number == 0 {
            return Err(WireError::ZeroField);
        }
        Ok(Some((number, wire)))
    }

    /// Skips a value of the given wire type.
    pub fn skip(&mut self, wire: WireType) -> Result<(), WireError> {
        match wire {
            WireType::Varint => self.varint().map(drop),
            WireType::Fixed64 => self.take(8).map(drop),
            WireType::Fixed32 => self.take(4).map(drop),
            WireType::Len => self.bytes().map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_varints_keys_and_length_delimited_values() {
        // field 1 varint 300, field 2 bytes "hi"
        let buf = [0x08, 0xac, 0x02, 0x12, 0x02, b'h', b'i'];
        let mut r = Reader::new(&buf);
        assert_eq!(r.key().unwrap(), Some((1, WireType::Varint)));
        assert_eq!(r.varint().unwrap(), 300);
        assert_eq!(r.key().unwrap(), Some((2, WireType::Len)));
        assert_eq!(r.bytes().unwrap(), b"hi");
        assert_eq!(r.key().unwrap(), None);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        assert_eq!(Reader::new(&[0x12, 0x05, b'a']).key().map(|_| ()), Ok(()));
        let mut r = Reader::new(&[0x12, 0x05, b'a']);
        r.key().unwrap();
        assert_eq!(r.bytes(), Err(WireError::Truncated));
        assert_eq!(Reader::new(&[0x80]).varint(), Err(WireError::Truncated));
        assert_eq!(
            Reader::new(&[0x0b]).key(),
            Err(WireError::BadWireType(3)),
            "groups are refused"
        );
        assert_eq!(Reader::new(&[0x00]).key(), Err(WireError::ZeroField));
    }
}
