//! RFC 1071 the slow, obvious way: one 16-bit word at a time, folded at
//! the end. The oracle for limpet's word-at-a-time `checksum::sum` and its
//! incremental updates.

/// The ones-complement sum of `data` as big-endian words (odd tail padded
/// with zero), folded to 16 bits.
pub fn sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut words = data.chunks(2);
    for w in &mut words {
        let hi = u64::from(w[0]);
        let lo = w.get(1).map_or(0, |&b| u64::from(b));
        acc += (hi << 8) | lo;
    }
    fold(acc)
}

/// Folds a wide accumulator with end-around carry.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Adds folded partial sums.
pub fn add(parts: &[u16]) -> u16 {
    fold(parts.iter().map(|&p| u64::from(p)).sum())
}

/// The IPv4 pseudo-header sum.
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, len: usize) -> u16 {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&src);
    b.extend_from_slice(&dst);
    b.push(0);
    b.push(protocol);
    b.extend_from_slice(&(len as u16).to_be_bytes());
    sum(&b)
}

/// The IPv6 pseudo-header sum.
pub fn pseudo_v6(src: [u8; 16], dst: [u8; 16], protocol: u8, len: usize) -> u16 {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&src);
    b.extend_from_slice(&dst);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, protocol]);
    sum(&b)
}

/// The checksum field value making `data` (with its field zeroed) plus
/// `pseudo` verify.
pub fn field_value(pseudo: u16, data_with_zero_field: &[u8]) -> u16 {
    !add(&[pseudo, sum(data_with_zero_field)])
}

/// Whether `data` (field included) plus `pseudo` verifies.
pub fn verifies(pseudo: u16, data: &[u8]) -> bool {
    add(&[pseudo, sum(data)]) == 0xffff
}

/// Whether two checksum field values are the same ones-complement number
/// (0x0000 and 0xffff both stand for zero).
pub fn same(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}
