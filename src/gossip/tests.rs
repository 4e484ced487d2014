//! Hostile datagrams: random bytes, truncated and bit-flipped real packets, oversized and
//! wrongly keyed ones are dropped and counted; none panics or changes the member table.

use super::runner::{Parts, Runner};
use super::*;
use std::sync::atomic::Ordering;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

fn runner(key: Option<&[u8]>) -> (Runner, Arc<RwLock<Table>>, Arc<Counters>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let id = ServerId {
        name: "fuzz.global".into(),
        addr,
        generation: 1,
        tags: BTreeMap::from([("role".to_string(), "nomad".to_string())]),
    };
    let mut entries = BTreeMap::new();
    entries.insert(
        id.name.clone(),
        Entry {
            id: id.clone(),
            status: MemberStatus::Alive,
            leaving: false,
            since: Instant::now(),
        },
    );
    let table = Arc::new(RwLock::new(Table {
        local: id.name.clone(),
        entries,
    }));
    let counters = Arc::new(Counters::default());
    let (_tx, rx) = crossbeam_channel::bounded(1);
    let r = Runner::new(Parts {
        socket,
        cipher: key.and_then(envelope::Cipher::new),
        id,
        table: table.clone(),
        counters: counters.clone(),
        commands: rx,
        retry_join: Vec::new(),
        start_join: Vec::new(),
        retry_interval: Duration::from_secs(1),
        retry_max: 0,
    });
    (r, table, counters)
}

/// A real foca packet from another member: an announce to `to`.
fn real_packet(from_port: u16, to: SocketAddr) -> Vec<u8> {
    let mut rt = foca::AccumulatingRuntime::new();
    let id = ServerId {
        name: "other.global".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], from_port)),
        generation: 7,
        tags: BTreeMap::new(),
    };
    let mut f = foca::Foca::new(
        id,
        foca_config(),
        SmallRng::seed_from_u64(1),
        identity::Codec,
    );
    f.announce(ServerId::at(to), &mut rt).expect("announce");
    rt.to_send().expect("a packet").1.to_vec()
}

#[test]
fn garbage_datagrams_are_dropped_and_counted_never_a_panic() {
    let (mut r, table, counters) = runner(None);
    let me = table.read().entries["fuzz.global"].id.addr;
    let from = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let real = envelope::seal(None, envelope::Kind::Foca, &real_packet(1, me)).expect("seal");
    let mut fed = 0u64;
    for round in 0..4000 {
        let d: Vec<u8> = match round % 4 {
            // Pure noise, any length up to one past the limit.
            0 => {
                let n = rng.random_range(1..=MAX_DATAGRAM + 1);
                (0..n).map(|_| rng.random()).collect()
            }
            // Our magic and kind, then noise: reaches foca's decoder.
            1 => {
                let n = rng.random_range(0..200);
                let mut d = vec![0x6e, 1];
                d.extend((0..n).map(|_| rng.random::<u8>()));
                d
            }
            // A real packet with a few bytes flipped.
            2 => {
                let mut d = real.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(2..d.len());
                    d[i] ^= rng.random_range(1..=255u8);
                }
                d
            }
            // A real packet cut short.
            _ => real[..rng.random_range(1..real.len())].to_vec(),
        };
        r.feed(&d, from);
        fed += 1;
    }
    let dropped = counters.dropped.load(Ordering::Relaxed);
    assert!(dropped > fed / 2, "dropped {dropped} of {fed}");
    // Nothing hostile became a member (a flipped packet may decode to a new sender: only
    // well-formed ones can; the table stays bounded).
    assert!(table.read().entries.len() <= MAX_MEMBERS);
    assert!(table.read().entries.contains_key("fuzz.global"));
}

#[test]
fn a_real_packet_is_taken_and_a_wrongly_keyed_one_is_not() {
    let (mut r, table, counters) = runner(Some(&[9u8; 32]));
    let me = table.read().entries["fuzz.global"].id.addr;
    let from = SocketAddr::from(([127, 0, 0, 1], 1));
    let packet = real_packet(1, me);
    let other_key = envelope::Cipher::new(&[8u8; 32]).expect("key");
    let wrong = envelope::seal(Some(&other_key), envelope::Kind::Foca, &packet).expect("seal");
    r.feed(&wrong, from);
    let plain = envelope::seal(None, envelope::Kind::Foca, &packet).expect("seal");
    r.feed(&plain, from);
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 2);
    assert!(!table.read().entries.contains_key("other.global"));
    let ours = envelope::Cipher::new(&[9u8; 32]).expect("key");
    let right = envelope::seal(Some(&ours), envelope::Kind::Foca, &packet).expect("seal");
    r.feed(&right, from);
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 2);
    assert_eq!(
        table.read().entries.get("other.global").map(|e| e.status),
        Some(MemberStatus::Alive),
        "the announcer is a member"
    );
}

#[test]
fn identities_out_of_bounds_do_not_decode() {
    let big = ServerId {
        name: "x".repeat(identity::MAX_NAME + 1),
        addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        generation: 1,
        tags: BTreeMap::new(),
    };
    let bytes = identity::encode_id(&big).expect("encode");
    assert!(identity::decode_id(&bytes).is_none());
    let many = ServerId {
        name: "a".into(),
        tags: (0..identity::MAX_TAGS + 1)
            .map(|i| (i.to_string(), String::new()))
            .collect(),
        ..big.clone()
    };
    assert!(identity::decode_id(&identity::encode_id(&many).expect("encode")).is_none());
    let fine = ServerId {
        name: "a.global".into(),
        ..big
    };
    assert_eq!(
        identity::decode_id(&identity::encode_id(&fine).expect("encode")),
        Some(fine)
    );
}

#[test]
fn join_addresses_default_to_the_serf_port() {
    assert_eq!(
        resolve("127.0.0.1").ok(),
        Some(SocketAddr::from(([127, 0, 0, 1], 4648)))
    );
    assert_eq!(
        resolve("127.0.0.1:5000").ok(),
        Some(SocketAddr::from(([127, 0, 0, 1], 5000)))
    );
    assert_eq!(
        resolve("[::1]").ok(),
        Some("[::1]:4648".parse().expect("v6"))
    );
    assert!(resolve("no such host.invalid").is_err());
}

#[test]
fn the_fuzz_entry_point_takes_any_bytes() {
    let mut rng = SmallRng::seed_from_u64(42);
    crate::fuzzing::gossip_datagram(&[]);
    crate::fuzzing::gossip_datagram(&[0, 0x6e, 1, 0, 0]);
    crate::fuzzing::gossip_datagram(&[1, 0x6f]);
    for _ in 0..500 {
        let n = rng.random_range(0..1600);
        let d: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        crate::fuzzing::gossip_datagram(&d);
    }
}
