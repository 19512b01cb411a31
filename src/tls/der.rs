//! Just enough DER to write and read the XMPP `otherName` subject alternative names.
//!
//! rcgen 0.14 can write an `otherName` only with a UTF8String value, but `SRVName` (RFC 4985) is an IA5String, and
//! rcgen writes all names into one extension. So [`super::ca`] encodes the whole subjectAltName extension itself
//! with [`tlv`]; [`super::info`] reads those names back from peer certificates with [`read_tlv`]. Nothing else here.

/// id-on-xmppAddr (RFC 6120 13.7.1.4): a UTF8String holding the domain.
pub(crate) const OID_XMPP_ADDR: &str = "1.3.6.1.5.5.7.8.5";
/// id-on-dnsSRV, `SRVName` (RFC 4985): an IA5String such as `_xmpp-server.example.net`.
pub(crate) const OID_SRV_NAME: &str = "1.3.6.1.5.5.7.8.7";
/// [`OID_XMPP_ADDR`] encoded as the contents of an OBJECT IDENTIFIER.
pub(crate) const OID_XMPP_ADDR_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05];
/// [`OID_SRV_NAME`] encoded as the contents of an OBJECT IDENTIFIER.
pub(crate) const OID_SRV_NAME_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07];

/// Universal tags and the context tags of `GeneralName` (RFC 5280 4.2.1.6) used here.
pub(crate) mod tag {
    pub(crate) const OID: u8 = 0x06;
    pub(crate) const UTF8_STRING: u8 = 0x0c;
    pub(crate) const IA5_STRING: u8 = 0x16;
    pub(crate) const SEQUENCE: u8 = 0x30;
    /// `[0]` constructed: `GeneralName.otherName`, and the explicit tag around an otherName's value.
    pub(crate) const CONTEXT_0: u8 = 0xa0;
    /// `[2]` primitive: `GeneralName.dNSName`.
    pub(crate) const DNS_NAME: u8 = 0x82;
    /// `[7]` primitive: `GeneralName.iPAddress`.
    pub(crate) const IP_ADDRESS: u8 = 0x87;
}

/// Encodes one tag-length-value with a definite length.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        // Short form; the cast cannot truncate because len < 0x80.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = &bytes[skip..];
        // Long form; a usize has at most 8 significant bytes, so the count fits in the low 7 bits.
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// Splits one tag-length-value off the front of `input`: `(tag, content, rest)`, or `None` if it is malformed,
/// uses a multi-byte tag, or an indefinite length.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > std::mem::size_of::<usize>() || rest.len() < count {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(count);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_round_trips_short_and_long_lengths() {
        for len in [0usize, 1, 0x7f, 0x80, 0xff, 0x100, 70_000] {
            let content = vec![0x5a; len];
            let encoded = tlv(tag::SEQUENCE, &content);
            let (t, c, rest) = read_tlv(&encoded).expect("well-formed");
            assert_eq!(
                (t, c, rest),
                (tag::SEQUENCE, &content[..], &[][..]),
                "len {len}"
            );
        }
    }

    #[test]
    fn read_tlv_rejects_truncated_input() {
        let encoded = tlv(tag::UTF8_STRING, b"hello");
        for end in 0..encoded.len() {
            assert!(read_tlv(&encoded[..end]).is_none(), "prefix of {end} bytes");
        }
    }
}
