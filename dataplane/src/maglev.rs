//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, §3.4).
//!
//! A [`MaglevTable`] maps a flow hash to one of a set of backends so that
//! (a) every backend owns an almost equal share of the table (exactly
//! `floor(M/N)` or `ceil(M/N)` slots when weights are equal), and (b) a change
//! to the backend set moves few slots: removing 1 of 100 backends changes about
//! 1.5% of a 65537-slot table, of which 1% is unavoidable.
//!
//! # Population
//!
//! The paper's algorithm, unchanged. Backend `i` gets
//! `offset = h1(identity) mod M` and `skip = h2(identity) mod (M-1) + 1`; its
//! preference list is `permutation[j] = (offset + j*skip) mod M`, a full cycle
//! of the table because `M` is prime. Backends take turns; on its turn a
//! backend claims the first slot of its preference list that is still empty.
//! The fill stops when all `M` slots are claimed. `h1` and `h2` are
//! `xxh3_64_with_seed` with two fixed seeds, so the table is a pure function of
//! the backend set and `M`: every limpet instance, on any machine, builds the
//! same table, which is what keeps ECMP-spread clients sticky without shared
//! state. Changing the seeds (or anything else in this file that feeds the
//! fill) is a wire-visible change: a fleet running mixed versions would
//! disagree on every client.
//!
//! # Turn order
//!
//! The paper takes turns in backend index order, so its table depends on how
//! the caller happened to order the backends. Here the turns follow the
//! backends' identities in ascending byte order, whatever order the caller
//! passes them in: the *identity* that owns a slot depends only on the set.
//! Table entries are still indexes into the caller's slice. Two weighted
//! backends with the same identity are rejected
//! ([`MaglevError::DuplicateIdentity`]): the set would have no single owner
//! per slot, and in practice a duplicate is an endpoint listed twice (e.g. in
//! two `EndpointSlices`) that the caller should have merged.
//!
//! # Weights
//!
//! The paper says only that weights "adjust the relative frequency of the
//! backends' turns". The scheme here is credit-based: let `W` be the largest
//! weight. In every round, each backend (in turn order) adds its weight to its
//! credit; if the credit reaches `W`, the backend takes one turn and pays `W`.
//! A backend of weight `W` therefore takes a turn every round, and one of
//! weight `w` takes `floor(r*w/W)` turns in the first `r` rounds, so its share
//! of the table is `w / sum(weights)` to within one slot per round boundary.
//! Because credit never exceeds `2W`, a backend takes at most one turn per
//! round, which interleaves heavy and light backends instead of letting a
//! heavy one claim a burst of slots. Only weight ratios matter: scaling every
//! weight by the same factor builds the same table. Weight 0 excludes a
//! backend (it never takes a turn); a backend whose share is below one slot
//! may own none.
//!
//! # Lookup
//!
//! [`MaglevTable::lookup`] reduces the hash with Lemire's multiply-shift
//! (`(hash * M) >> 64` in 128 bits) instead of `hash % M`: one multiplication
//! instead of a 64-bit division, and just as deterministic (pure integer
//! arithmetic). It reads the hash's high bits, so the hash must be well mixed
//! there (xxh3 is; a raw address is not). Each slot still receives
//! `floor(2^64/M)` or `ceil(2^64/M)` of the hash space.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The paper's table size: a prime well above 100 x a typical backend count.
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

/// The most backends a table can index: entries are `u16`, and `u16::MAX`
/// is reserved as the "empty" mark during the fill.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// Seed of `h1` (the offset hash). Part of the cross-instance contract.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
/// Seed of `h2` (the skip hash). Must differ from [`OFFSET_SEED`] so that
/// offset and skip are independent.
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// Marks a slot not yet claimed; never a valid backend index because
/// [`MAX_BACKENDS`] keeps indexes below it.
const EMPTY: u16 = u16::MAX;

/// One backend as the caller describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable bytes naming the backend, e.g. `b"192.0.2.10:9376/TCP"`. Must be
    /// the same on every instance that should agree on the table.
    pub identity: &'a [u8],
    /// Relative weight; 0 excludes the backend.
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The table size must be prime, or a backend's preference list would not
    /// visit every slot.
    #[error("Maglev table size {size} is not prime")]
    NotPrime { size: usize },
    /// Fewer slots than weighted backends: some backend would get none.
    #[error(
        "Maglev table size {size} is smaller than the number of weighted backends ({backends})"
    )]
    TooSmall { size: usize, backends: usize },
    /// Table entries are `u16` indexes into the backend slice.
    #[error("{count} backends exceed the Maglev limit of {max}", max = MAX_BACKENDS)]
    TooManyBackends { count: usize },
    /// Two weighted backends (indexes into the caller's slice, `first < second`)
    /// share an identity.
    #[error("Maglev backends {first} and {second} have the same identity")]
    DuplicateIdentity { first: usize, second: usize },
}

/// A populated Maglev lookup table. Immutable; rebuild it when the backend
/// set changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    /// Slot -> index into the backend slice the table was built from. Empty
    /// when no backend had a positive weight.
    entries: Box<[u16]>,
    /// Length of that backend slice (weighted or not).
    backends: usize,
}

impl MaglevTable {
    /// Builds the table for `backends` with `size` slots.
    ///
    /// `size` must be prime and at least the number of backends with a
    /// positive weight; [`table_size_for`] picks a suitable one. A set with no
    /// weighted backend (including an empty slice) builds an empty table whose
    /// [`lookup`](Self::lookup) always returns `None`; `size` must still be
    /// prime, so that a bad size is caught before the first endpoint arrives.
    pub fn build(backends: &[MaglevBackend<'_>], size: usize) -> Result<Self, MaglevError> {
        if backends.len() > MAX_BACKENDS {
            return Err(MaglevError::TooManyBackends {
                count: backends.len(),
            });
        }
        if !is_prime(size as u64) {
            return Err(MaglevError::NotPrime { size });
        }
        // Indexes fit in u16: checked against MAX_BACKENDS above.
        let mut order: Vec<u16> = (0..backends.len() as u16)
            .filter(|&i| backends[usize::from(i)].weight > 0)
            .collect();
        if order.len() > size {
            return Err(MaglevError::TooSmall {
                size,
                backends: order.len(),
            });
        }
        if order.is_empty() {
            return Ok(Self {
                entries: Box::default(),
                backends: backends.len(),
            });
        }
        order.sort_unstable_by_key(|&i| backends[usize::from(i)].identity);
        if let Some(pair) = order
            .windows(2)
            .find(|p| backends[usize::from(p[0])].identity == backends[usize::from(p[1])].identity)
        {
            let (a, b) = (usize::from(pair[0]), usize::from(pair[1]));
            return Err(MaglevError::DuplicateIdentity {
                first: a.min(b),
                second: a.max(b),
            });
        }
        let mut cursors: Vec<Cursor> = order
            .iter()
            .map(|&i| {
                let b = &backends[usize::from(i)];
                let (offset, skip) = offset_skip(b.identity, size);
                Cursor::new(offset, skip, b.weight, i)
            })
            .collect();
        Ok(Self {
            entries: populate(&mut cursors, size),
            backends: backends.len(),
        })
    }

    /// The backend (index into the slice the table was built from) that owns
    /// `hash`, or `None` when the table is empty.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        // Lemire's reduction: always < len for len >= 1, and 0 for len == 0,
        // where `get` then yields None: no division and no panic.
        let slot = ((u128::from(hash) * self.entries.len() as u128) >> 64) as usize;
        self.entries.get(slot).copied()
    }

    /// Number of slots (`M`); 0 for an empty table.
    #[inline]
    pub fn size(&self) -> usize {
        self.entries.len()
    }

    /// Whether no backend owns any slot, i.e. every lookup returns `None`.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Length of the backend slice the table was built from.
    #[inline]
    pub fn backends(&self) -> usize {
        self.backends
    }

    /// Slot -> backend index.
    #[inline]
    pub fn entries(&self) -> &[u16] {
        &self.entries
    }

    /// Slots owned by each backend, indexed like the backend slice (0 for
    /// excluded backends). Allocates: for tests and metrics, not the packet
    /// path.
    pub fn shares(&self) -> Vec<usize> {
        let mut shares = vec![0; self.backends];
        for &e in &self.entries {
            shares[usize::from(e)] += 1;
        }
        shares
    }
}

/// The smallest prime table size that is at least [`DEFAULT_TABLE_SIZE`] and
/// at least 100 x `backends`, the paper's rule for keeping imbalance and
/// disruption near 1%. Counts above [`MAX_BACKENDS`] are clamped, since
/// [`MaglevTable::build`] rejects such sets anyway.
pub fn table_size_for(backends: usize) -> usize {
    let mut size = (backends.min(MAX_BACKENDS) * 100).max(DEFAULT_TABLE_SIZE);
    // Bounded: prime gaps below 6.6e6 are under 160.
    while !is_prime(size as u64) {
        size += 1;
    }
    size
}

/// The smallest prime `>= n`, or `None` if none fits in a `u64`
/// (`n > 18_446_744_073_709_551_557`).
pub fn next_prime_at_least(n: u64) -> Option<u64> {
    let mut candidate = n.max(2);
    loop {
        if is_prime(candidate) {
            return Some(candidate);
        }
        candidate = candidate.checked_add(1)?;
    }
}

/// Deterministic primality test for any `u64`: trial division by the primes
/// up to 37, then Miller-Rabin with those same primes as witnesses, which is
/// exact below 3.3e24 (Sorenson and Webster, 2015). About a microsecond.
#[allow(
    clippy::manual_is_multiple_of,
    reason = "u64::is_multiple_of needs Rust 1.87; the workspace declares 1.85"
)]
pub fn is_prime(n: u64) -> bool {
    const WITNESSES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for p in WITNESSES {
        if n % p == 0 {
            return n == p;
        }
    }
    // A composite below 41^2 has a prime factor below 41, ruled out above.
    if n < 41 * 41 {
        return true;
    }
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    'witness: for a in WITNESSES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    (u128::from(a) * u128::from(b) % u128::from(m)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut acc = 1;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    acc
}

/// The paper's `(offset, skip)` for one backend in a table of prime `size`.
fn offset_skip(identity: &[u8], size: usize) -> (usize, usize) {
    let m = size as u64;
    let offset = xxh3_64_with_seed(identity, OFFSET_SEED) % m;
    let skip = xxh3_64_with_seed(identity, SKIP_SEED) % (m - 1) + 1;
    (offset as usize, skip as usize)
}

/// A backend's progress through its preference list during the fill.
///
/// The paper keeps `next[i]` and evaluates `(offset + next[i]*skip) mod M`
/// on every probe; keeping the permutation value itself and stepping it by
/// `skip` (one add and a conditional subtract) visits the same sequence
/// without a multiply or a division per probe.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    /// Current element of the preference list, `< M`.
    pos: usize,
    skip: usize,
    weight: u64,
    /// Weight accumulated since the last turn, `< max weight` between rounds.
    credit: u64,
    /// Index into the caller's backend slice.
    index: u16,
}

impl Cursor {
    fn new(offset: usize, skip: usize, weight: u32, index: u16) -> Self {
        Self {
            pos: offset,
            skip,
            weight: u64::from(weight),
            credit: 0,
            index,
        }
    }
}

/// Runs the fill for cursors already in turn order, all with weight > 0.
/// `size` must be prime and `>= cursors.len() >= 1`; the result has `size`
/// entries, none of them [`EMPTY`].
fn populate(cursors: &mut [Cursor], size: usize) -> Box<[u16]> {
    debug_assert!(!cursors.is_empty() && cursors.len() <= size);
    let max_weight = cursors.iter().map(|c| c.weight).max().unwrap_or(1);
    // The entries double as the paper's "filled" set: a 2-byte read of the
    // slot about to be written is as cheap as a bitmap probe and saves a pass.
    let mut entries = vec![EMPTY; size];
    let mut filled = 0;
    // Terminates: the heaviest backend takes a turn every round, and each turn
    // claims a slot because a full-cycle preference list reaches every empty
    // slot.
    loop {
        for c in cursors.iter_mut() {
            c.credit += c.weight;
            if c.credit < max_weight {
                continue;
            }
            c.credit -= max_weight;
            while entries[c.pos] != EMPTY {
                c.pos += c.skip;
                if c.pos >= size {
                    c.pos -= size;
                }
            }
            entries[c.pos] = c.index;
            filled += 1;
            if filled == size {
                return entries.into_boxed_slice();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The paper's population pseudocode, written independently of
    /// [`populate`]: full permutation arrays, `next[i]` indexes, `%` on every
    /// probe, `Option` slots. Same turn order (identity) and weight credits.
    fn reference(backends: &[MaglevBackend<'_>], m: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].weight > 0)
            .collect();
        order.sort_by(|&a, &b| backends[a].identity.cmp(backends[b].identity));
        if order.is_empty() {
            return Vec::new();
        }
        let permutation: Vec<Vec<usize>> = order
            .iter()
            .map(|&i| {
                let id = backends[i].identity;
                let offset = (xxh3_64_with_seed(id, OFFSET_SEED) % m as u64) as usize;
                let skip = (xxh3_64_with_seed(id, SKIP_SEED) % (m as u64 - 1)) as usize + 1;
                (0..m).map(|j| (offset + j * skip) % m).collect()
            })
            .collect();
        reference_fill(
            &permutation,
            &order
                .iter()
                .map(|&i| backends[i].weight)
                .collect::<Vec<_>>(),
            &order,
            m,
        )
    }

    fn reference_fill(
        permutation: &[Vec<usize>],
        weights: &[u32],
        owner: &[usize],
        m: usize,
    ) -> Vec<usize> {
        let n = permutation.len();
        let max_weight = u64::from(*weights.iter().max().unwrap());
        let mut credit = vec![0u64; n];
        let mut next = vec![0usize; n];
        let mut entry: Vec<Option<usize>> = vec![None; m];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                credit[i] += u64::from(weights[i]);
                if credit[i] < max_weight {
                    continue;
                }
                credit[i] -= max_weight;
                let mut c = permutation[i][next[i]];
                while entry[c].is_some() {
                    next[i] += 1;
                    c = permutation[i][next[i]];
                }
                entry[c] = Some(owner[i]);
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        entry.into_iter().map(Option::unwrap).collect()
    }

    fn ids(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("198.18.{}.{}:9376/TCP", i / 256, i % 256).into_bytes())
            .collect()
    }

    fn equal(ids: &[Vec<u8>]) -> Vec<MaglevBackend<'_>> {
        ids.iter()
            .map(|id| MaglevBackend {
                identity: id,
                weight: 1,
            })
            .collect()
    }

    /// Slot -> owning identity, to compare tables built from different slices.
    fn owners<'a>(t: &MaglevTable, b: &[MaglevBackend<'a>]) -> Vec<&'a [u8]> {
        t.entries()
            .iter()
            .map(|&e| b[usize::from(e)].identity)
            .collect()
    }

    fn as_usize(t: &MaglevTable) -> Vec<usize> {
        t.entries().iter().map(|&e| usize::from(e)).collect()
    }

    #[test]
    fn paper_example() {
        // §3.4, Table 1: B0 (offset 3, skip 4), B1 (0, 2), B2 (3, 1), M = 7.
        let mut c = [
            Cursor::new(3, 4, 1, 0),
            Cursor::new(0, 2, 1, 1),
            Cursor::new(3, 1, 1, 2),
        ];
        assert_eq!(&*populate(&mut c, 7), &[1, 0, 1, 0, 2, 2, 0]);
        // ... and after B1 is removed.
        let mut c = [Cursor::new(3, 4, 1, 0), Cursor::new(3, 1, 1, 2)];
        assert_eq!(&*populate(&mut c, 7), &[0, 0, 0, 0, 2, 2, 2]);
    }

    const A: &[u8] = b"192.0.2.10:9376/TCP";
    const B: &[u8] = b"192.0.2.11:9376/TCP";
    const C: &[u8] = b"192.0.2.12:9376/TCP";

    #[test]
    fn golden_hashes() {
        // Pins h1/h2 and their seeds: if these move, every deployed table
        // moves with them, and a fleet running mixed versions disagrees.
        assert_eq!(offset_skip(A, 7), (3, 3));
        assert_eq!(offset_skip(B, 7), (6, 3));
        assert_eq!(offset_skip(C, 7), (5, 3));
        assert_eq!(offset_skip(A, 13), (0, 3));
        assert_eq!(offset_skip(B, 13), (6, 9));
        assert_eq!(offset_skip(C, 13), (0, 9));
    }

    #[test]
    fn golden_m7() {
        // Worked by hand from golden_hashes; turns go A, B, C (identity
        // order) although the caller passes C, A, B.
        //   A (3, 3): 3 6 2 5 1 4 0
        //   B (6, 3): 6 2 5 1 4 0 3
        //   C (5, 3): 5 1 4 0 3 6 2
        // A->3; B->6; C->5; A->6x,2; B->2x,5x,1; C->1x,4; A->5x,1x,4x,0 (full)
        let b = [
            MaglevBackend {
                identity: C,
                weight: 1,
            },
            MaglevBackend {
                identity: A,
                weight: 1,
            },
            MaglevBackend {
                identity: B,
                weight: 1,
            },
        ];
        let t = MaglevTable::build(&b, 7).unwrap();
        let (a, b_, c) = (1, 2, 0); // caller indexes of A, B, C
        assert_eq!(t.entries(), &[a, b_, a, a, c, c, b_]);
        assert_eq!(as_usize(&t), reference(&b, 7));
    }

    #[test]
    fn golden_m13() {
        //   A (0, 3): 0 3 6 9 12 2 5 8 11 1 4 7 10
        //   B (6, 9): 6 2 11 7 3 12 8 4 0 9 5 1 10
        //   C (0, 9): 0 9 5 1 10 6 2 11 7 3 12 8 4
        // r1: A->0; B->6; C->0x,9.  r2: A->3; B->2; C->5.
        // r3: A->6x,9x,12; B->11; C->1.  r4: A->2x,5x,8; B->7; C->10.
        // r5: A->11x,1x,4 (full)
        let b = [
            MaglevBackend {
                identity: A,
                weight: 1,
            },
            MaglevBackend {
                identity: B,
                weight: 1,
            },
            MaglevBackend {
                identity: C,
                weight: 1,
            },
        ];
        let t = MaglevTable::build(&b, 13).unwrap();
        assert_eq!(t.entries(), &[0, 2, 1, 0, 0, 2, 1, 1, 0, 2, 2, 1, 0]);
        assert_eq!(t.shares(), vec![5, 4, 4]);
        assert_eq!(as_usize(&t), reference(&b, 13));
    }

    #[test]
    fn golden_weighted_m13() {
        // A weight 2, B and C weight 1 (max 2): A takes a turn every round,
        // B and C every second round, starting in round 2.
        // r1: A->0.  r2: A->3; B->6; C->0x,9.  r3: A->6x,9x,12.
        // r4: A->2; B->2x,11; C->5.  r5: A->5x,8.
        // r6: A->11x,1; B->7; C->1x,10.  r7: A->4 (full)
        let b = [
            MaglevBackend {
                identity: A,
                weight: 2,
            },
            MaglevBackend {
                identity: B,
                weight: 1,
            },
            MaglevBackend {
                identity: C,
                weight: 1,
            },
        ];
        let t = MaglevTable::build(&b, 13).unwrap();
        assert_eq!(t.entries(), &[0, 0, 0, 0, 0, 2, 1, 1, 0, 2, 2, 1, 0]);
        assert_eq!(t.shares(), vec![7, 3, 3]);
        assert_eq!(as_usize(&t), reference(&b, 13));
    }

    proptest! {
        #[test]
        fn matches_reference(
            set in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..12), 0u32..5), 0..40),
            m in prop::sample::select(vec![2usize, 3, 5, 7, 13, 31, 101, 251, 1009]),
        ) {
            let mut set = set;
            set.sort_by(|x, y| x.0.cmp(&y.0));
            set.dedup_by(|x, y| x.0 == y.0);
            let b: Vec<_> = set.iter().map(|(id, w)| MaglevBackend { identity: id, weight: *w }).collect();
            let weighted = b.iter().filter(|x| x.weight > 0).count();
            match MaglevTable::build(&b, m) {
                Ok(t) => {
                    prop_assert!(weighted <= m);
                    prop_assert_eq!(as_usize(&t), reference(&b, m));
                }
                Err(e) => prop_assert_eq!(e, MaglevError::TooSmall { size: m, backends: weighted }),
            }
        }
    }

    #[test]
    fn matches_reference_large() {
        let ids = ids(300);
        let mut b = equal(&ids);
        for (i, x) in b.iter_mut().enumerate() {
            x.weight = [1, 2, 3, 0, 7][i % 5];
        }
        for m in [307, 4099, 65_537] {
            let t = MaglevTable::build(&b, m).unwrap();
            assert_eq!(as_usize(&t), reference(&b, m), "M = {m}");
        }
    }

    #[test]
    fn deterministic_and_order_independent() {
        let ids = ids(50);
        let b = equal(&ids);
        let t1 = MaglevTable::build(&b, 65_537).unwrap();
        let t2 = MaglevTable::build(&b, 65_537).unwrap();
        assert_eq!(t1, t2);

        let mut reordered = b.clone();
        reordered.reverse();
        reordered.rotate_left(17);
        let t3 = MaglevTable::build(&reordered, 65_537).unwrap();
        assert_ne!(
            t1.entries(),
            t3.entries(),
            "indexes follow the caller's slice"
        );
        assert_eq!(owners(&t1, &b), owners(&t3, &reordered));
    }

    #[test]
    fn balance_equal_weights() {
        for n in [3, 10, 100, 500] {
            let ids = ids(n);
            let m = table_size_for(n);
            assert_eq!(m, DEFAULT_TABLE_SIZE);
            let t = MaglevTable::build(&equal(&ids), m).unwrap();
            let shares = t.shares();
            let (min, max) = (*shares.iter().min().unwrap(), *shares.iter().max().unwrap());
            assert!(max - min <= 1, "N = {n}: shares {min}..={max}");
            assert!(
                max as f64 / min as f64 <= 1.01,
                "N = {n}: shares {min}..={max}"
            );
            assert_eq!(shares.iter().sum::<usize>(), m);
        }
    }

    #[test]
    fn disruption_on_remove() {
        let m = DEFAULT_TABLE_SIZE;
        let ids = ids(100);
        let all = equal(&ids);
        let before = MaglevTable::build(&all, m).unwrap();
        let mut fewer = all.clone();
        let gone = fewer.remove(37).identity;
        let after = MaglevTable::build(&fewer, m).unwrap();

        let (old, new) = (owners(&before, &all), owners(&after, &fewer));
        let lost = old.iter().filter(|&&o| o == gone).count();
        assert!(lost >= m / 100, "the removed backend owned {lost}");
        let changed = old.iter().zip(&new).filter(|(o, n)| o != n).count();
        assert!(new.iter().all(|&o| o != gone));
        assert!(changed * 50 <= m, "{changed} of {m} slots changed");
    }

    #[test]
    fn disruption_on_add() {
        let m = DEFAULT_TABLE_SIZE;
        let ids = ids(101);
        let all = equal(&ids);
        let before = MaglevTable::build(&all[..100], m).unwrap();
        let after = MaglevTable::build(&all, m).unwrap();
        let added = all[100].identity;

        let (old, new) = (owners(&before, &all[..100]), owners(&after, &all));
        let changed = old.iter().zip(&new).filter(|(o, n)| o != n).count();
        let between_old = old
            .iter()
            .zip(&new)
            .filter(|&(o, n)| o != n && *n != added)
            .count();
        assert!(changed * 50 <= m, "{changed} of {m} slots changed");
        assert!(
            between_old * 100 <= m,
            "{between_old} slots moved between old backends"
        );
        assert!(after.shares()[100] >= m / 101);
    }

    #[test]
    fn weights() {
        let m = DEFAULT_TABLE_SIZE;
        let ids = ids(20);
        let mut b = equal(&ids);
        for x in b.iter_mut().step_by(2) {
            x.weight = 2;
        }
        let t = MaglevTable::build(&b, m).unwrap();
        let total: u32 = b.iter().map(|x| x.weight).sum();
        for (x, &share) in b.iter().zip(&t.shares()) {
            let want = m as f64 * f64::from(x.weight) / f64::from(total);
            assert!(
                (share as f64 - want).abs() / want < 0.03,
                "weight {}: {share} slots, want {want:.0}",
                x.weight
            );
        }

        // Only ratios matter.
        let scaled: Vec<_> = b
            .iter()
            .map(|x| MaglevBackend {
                weight: x.weight * 1000,
                ..*x
            })
            .collect();
        assert_eq!(MaglevTable::build(&scaled, m).unwrap(), t);
    }

    #[test]
    fn extreme_weights() {
        // u32::MAX must not overflow the credit; the light backend still
        // gets about its share.
        let b = [
            MaglevBackend {
                identity: A,
                weight: u32::MAX,
            },
            MaglevBackend {
                identity: B,
                weight: u32::MAX / 4,
            },
        ];
        let shares = MaglevTable::build(&b, 65_537).unwrap().shares();
        assert!(
            (shares[0] as f64 / shares[1] as f64 - 4.0).abs() < 0.05,
            "{shares:?}"
        );
    }

    #[test]
    fn zero_weight_is_excluded() {
        let ids = ids(10);
        let mut b = equal(&ids);
        b[4].weight = 0;
        let t = MaglevTable::build(&b, 101).unwrap();
        assert_eq!(t.shares()[4], 0);
        assert_eq!(t.backends(), 10);
        let without: Vec<_> = b.iter().copied().filter(|x| x.weight > 0).collect();
        let u = MaglevTable::build(&without, 101).unwrap();
        assert_eq!(owners(&t, &b), owners(&u, &without));
    }

    #[test]
    fn empty_sets() {
        let ids = ids(3);
        let mut zero = equal(&ids);
        for x in &mut zero {
            x.weight = 0;
        }
        for b in [&[][..], &zero[..]] {
            let t = MaglevTable::build(b, DEFAULT_TABLE_SIZE).unwrap();
            assert!(t.is_empty());
            assert_eq!(t.size(), 0);
            assert_eq!(t.shares(), vec![0; b.len()]);
            for h in [0, 1, 1 << 63, u64::MAX] {
                assert_eq!(t.lookup(h), None);
            }
        }
        assert_eq!(
            MaglevTable::build(&[], 65_536),
            Err(MaglevError::NotPrime { size: 65_536 })
        );
    }

    #[test]
    fn lookup_reduces_high_bits() {
        let ids = ids(7);
        let b = equal(&ids);
        let t = MaglevTable::build(&b, 13).unwrap();
        let e = t.entries();
        assert_eq!(t.lookup(0), Some(e[0]));
        assert_eq!(t.lookup(u64::MAX), Some(e[12]));
        // Slot k covers [ceil(k * 2^64 / 13), ceil((k+1) * 2^64 / 13)).
        for k in 0..13u128 {
            let start = ((k << 64).div_ceil(13)) as u64;
            assert_eq!(t.lookup(start), Some(e[k as usize]), "slot {k}");
            if k > 0 {
                assert_eq!(t.lookup(start - 1), Some(e[k as usize - 1]), "slot {k}");
            }
        }
    }

    #[test]
    fn errors() {
        let ids = ids(8);
        let b = equal(&ids);
        for size in [0, 1, 4, 9, 65_536, 65_535] {
            assert_eq!(
                MaglevTable::build(&b, size),
                Err(MaglevError::NotPrime { size })
            );
        }
        assert_eq!(
            MaglevTable::build(&b, 7),
            Err(MaglevError::TooSmall {
                size: 7,
                backends: 8
            })
        );
        // Excluded backends do not count against the size.
        let mut some = b.clone();
        some[0].weight = 0;
        assert!(MaglevTable::build(&some, 7).is_ok());

        let many = vec![
            MaglevBackend {
                identity: A,
                weight: 1
            };
            MAX_BACKENDS + 1
        ];
        assert_eq!(
            MaglevTable::build(&many, DEFAULT_TABLE_SIZE),
            Err(MaglevError::TooManyBackends { count: 65_536 })
        );

        let mut dup = b.clone();
        dup[6].identity = dup[2].identity;
        assert_eq!(
            MaglevTable::build(&dup, 13),
            Err(MaglevError::DuplicateIdentity {
                first: 2,
                second: 6
            })
        );
        // A duplicate that is excluded is not ambiguous.
        dup[6].weight = 0;
        assert!(MaglevTable::build(&dup, 13).is_ok());
    }

    #[test]
    fn max_backends_fit() {
        let ids = ids(MAX_BACKENDS);
        let b = equal(&ids);
        let m = table_size_for(b.len());
        let t = MaglevTable::build(&b, m).unwrap();
        let shares = t.shares();
        assert_eq!(shares.len(), MAX_BACKENDS);
        assert!(shares.iter().all(|&s| s == 100 || s == 101));
        assert!(t.entries().iter().all(|&e| e != EMPTY));
    }

    #[test]
    fn primes() {
        let limit = 200_000;
        let mut sieve = vec![true; limit];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..limit {
            if sieve[i] {
                for j in (i * i..limit).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (n, &p) in sieve.iter().enumerate() {
            assert_eq!(is_prime(n as u64), p, "{n}");
        }
        // Large primes, Carmichael numbers and strong pseudoprimes to the
        // first few bases.
        for p in [
            65_537,
            1_000_003,
            2_147_483_647,
            (1 << 61) - 1,
            18_446_744_073_709_551_557,
        ] {
            assert!(is_prime(p), "{p}");
        }
        for c in [
            561,
            41_041,
            3_215_031_751,
            3_825_123_056_546_413_051,
            u64::MAX,
            (1 << 61) + 1,
            65_537 * 65_539,
        ] {
            assert!(!is_prime(c), "{c}");
        }
    }

    #[test]
    fn next_primes() {
        assert_eq!(next_prime_at_least(0), Some(2));
        assert_eq!(next_prime_at_least(2), Some(2));
        assert_eq!(next_prime_at_least(14), Some(17));
        assert_eq!(next_prime_at_least(65_536), Some(65_537));
        assert_eq!(next_prime_at_least(65_537), Some(65_537));
        assert_eq!(next_prime_at_least(100_000), Some(100_003));
        assert_eq!(next_prime_at_least(u64::MAX - 58), Some(u64::MAX - 58));
        assert_eq!(next_prime_at_least(u64::MAX - 57), None);

        assert_eq!(table_size_for(0), DEFAULT_TABLE_SIZE);
        assert_eq!(table_size_for(655), DEFAULT_TABLE_SIZE);
        assert_eq!(table_size_for(1000), 100_003);
        assert_eq!(table_size_for(usize::MAX), table_size_for(MAX_BACKENDS));
        assert!(is_prime(table_size_for(MAX_BACKENDS) as u64));
    }
}
