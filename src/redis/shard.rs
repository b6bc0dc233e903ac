//! Which stream an entry goes to.
//!
//! With one shard (the default) every entry goes to the stream named in the options (`audit`). With
//! `shards: N` (N > 1) an entry goes to `audit:k`, `k = fnv1a64(tenantId) mod N`, so all the entries of one
//! tenant are in one stream, in order. An entry without a tenant counts as tenant `""`.
//!
//! The keys are plain (`audit:0`, `audit:1`, ...), not hash-tagged: in a Redis Cluster each lands in the
//! slot of its own name, so the shards spread over the nodes, which is what sharding is for. Every command
//! the producer and the worker send names a single stream key, so no command crosses slots.
//!
//! The hash is FNV-1a over the tenant's UTF-8 bytes: the same in every process, version and platform.
//! Producers and workers must agree on `stream` and `shards`; changing `shards` while a stream still holds
//! entries leaves those to workers that serve the old keys.

/// The stream keys of `stream` split in `shards` (at least one).
pub fn stream_keys(stream: &str, shards: u32) -> Vec<String> {
    if shards <= 1 {
        vec![stream.to_owned()]
    } else {
        (0..shards).map(|k| format!("{stream}:{k}")).collect()
    }
}

/// The shard (index into [`stream_keys`]) of an entry with this tenant.
pub fn shard_of(tenant: Option<&str>, shards: u32) -> usize {
    if shards <= 1 {
        return 0;
    }
    (fnv1a64(tenant.unwrap_or("").as_bytes()) % u64::from(shards)) as usize
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_is_the_plain_stream_and_n_shards_are_numbered() {
        assert_eq!(stream_keys("audit", 1), vec!["audit"]);
        assert_eq!(stream_keys("audit", 0), vec!["audit"]);
        assert_eq!(
            stream_keys("audit", 3),
            vec!["audit:0", "audit:1", "audit:2"]
        );
    }

    #[test]
    fn a_tenant_always_maps_to_the_same_shard_and_tenants_spread() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of(Some("t1"), 1), 0);
        let a = shard_of(Some("tenant-42"), 4);
        assert_eq!(a, shard_of(Some("tenant-42"), 4));
        let used: std::collections::HashSet<usize> = (0..100)
            .map(|i| shard_of(Some(&format!("tenant-{i}")), 4))
            .collect();
        assert_eq!(used.len(), 4);
        assert_eq!(shard_of(None, 4), shard_of(Some(""), 4));
    }
}
