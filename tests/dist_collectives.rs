//! The CPU ring backend and the TCP bootstrap, with ranks as threads of this test over localhost: every
//! collective against sums computed here, bitwise agreement between ranks, launch mismatches, a used port, an
//! unreachable master and a rank that dies.

use nanochat::dist::env::discover;
use nanochat::dist::ring::connect;
use nanochat::dist::{Collectives, Fingerprint, RankInfo, ReduceOp, Timeouts};
use std::collections::HashMap;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn info(rank: usize, world: usize, port: u16) -> RankInfo {
    let vars: HashMap<&str, String> = [
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", port.to_string()),
    ]
    .into_iter()
    .collect();
    discover(&|k| vars.get(k).cloned()).unwrap()
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(30),
        op: Duration::from_secs(30),
    }
}

/// Runs `f` on `world` ranks (threads) joined over a fresh port; returns each rank's result.
fn on_ranks<T: Send + 'static>(
    world: usize,
    fps: Vec<Fingerprint>,
    f: impl Fn(usize, Result<Box<dyn Collectives>, String>) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let f = f.clone();
            let fp = fps[r].clone();
            std::thread::spawn(move || f(r, connect(&info(r, world, port), &fp, &timeouts())))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Rank r's contribution: small integers, so that every sum is exact in fp32 in any order.
fn data(r: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7 + r * 13) % 17) as f32 - 8.0).collect()
}

#[test]
fn every_collective_on_two_three_and_four_ranks() {
    for world in [2, 3, 4] {
        for n in [0, 1, 5, 1000, 12 * 4 * 97] {
            let results = on_ranks(world, vec![Fingerprint::new(); world], move |r, c| {
                let mut c = c.unwrap();
                assert_eq!((c.rank(), c.world_size()), (r, world));
                let mut sum = data(r, n);
                c.all_reduce(&mut sum, ReduceOp::Sum).unwrap();
                let mut avg = data(r, n);
                c.all_reduce(&mut avg, ReduceOp::Avg).unwrap();
                let k = n / world;
                let mut rs = vec![0.0; k];
                c.reduce_scatter(&data(r, k * world), &mut rs, ReduceOp::Sum).unwrap();
                let mut ag = vec![0.0; k * world];
                c.all_gather(&data(r, k), &mut ag).unwrap();
                let mut bc = data(r, n);
                c.broadcast(&mut bc, world - 1).unwrap();
                c.barrier().unwrap();
                (sum, avg, rs, ag, bc)
            });
            let expect_sum: Vec<f32> = (0..n).map(|i| (0..world).map(|r| data(r, n)[i]).sum()).collect();
            let k = n / world;
            for (r, (sum, avg, rs, ag, bc)) in results.iter().enumerate() {
                assert_eq!(sum, &expect_sum, "all_reduce sum, world {world}, n {n}");
                for (a, s) in avg.iter().zip(&expect_sum) {
                    assert_eq!(*a, s / world as f32, "all_reduce avg");
                }
                let full: Vec<f32> = (0..k * world)
                    .map(|i| (0..world).map(|q| data(q, k * world)[i]).sum())
                    .collect();
                assert_eq!(rs, &full[r * k..(r + 1) * k], "reduce_scatter chunk {r}");
                let gathered: Vec<f32> = (0..world).flat_map(|q| data(q, k)).collect();
                assert_eq!(ag, &gathered, "all_gather");
                assert_eq!(bc, &data(world - 1, n), "broadcast from the last rank");
            }
        }
    }
}

#[test]
fn inexact_sums_are_bitwise_equal_on_every_rank_and_reproducible() {
    let run = || {
        on_ranks(3, vec![Fingerprint::new(); 3], |r, c| {
            let mut c = c.unwrap();
            let mut v: Vec<f32> = (0..999)
                .map(|i| ((i + 1) as f32 * 0.1).sin() * (r as f32 + 1.3))
                .collect();
            c.all_reduce(&mut v, ReduceOp::Avg).unwrap();
            v
        })
    };
    let a = run();
    assert!(a.iter().all(|v| v == &a[0]), "ranks disagree");
    assert_eq!(run(), a, "a second run differs");
}

#[test]
fn mismatched_fingerprint_fails_on_every_rank_naming_the_difference() {
    let fps = vec![
        Fingerprint::new().with("depth", 4).with("batch", 8),
        Fingerprint::new().with("depth", 2).with("batch", 8),
    ];
    let errs = on_ranks(2, fps, |_, c| c.err().expect("a mismatched launch must fail"));
    for e in &errs {
        assert!(
            e.contains("depth: 4 on rank 0, 2 on rank 1") && !e.contains("batch") && !e.contains('\n'),
            "{e}"
        );
    }
}

#[test]
fn mismatched_world_size_is_named() {
    let port = free_port();
    let t = std::thread::spawn(move || connect(&info(0, 2, port), &Fingerprint::new(), &timeouts()).err());
    let other = connect(&info(1, 3, port), &Fingerprint::new(), &timeouts())
        .err()
        .unwrap();
    let master = t.join().unwrap().unwrap();
    for e in [master, other] {
        assert!(e.contains("world size of 3") && e.contains("rank 0 with 2"), "{e}");
    }
}

#[test]
fn port_in_use_and_unreachable_master_are_one_line_errors() {
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let e = connect(&info(0, 2, port), &Fingerprint::new(), &timeouts())
        .err()
        .unwrap();
    assert!(
        e.contains(&format!("port {port}")) && e.contains("already in use"),
        "{e}"
    );
    drop(busy);

    let quick = Timeouts {
        connect: Duration::from_secs(2),
        op: Duration::from_secs(2),
    };
    let e = connect(&info(1, 2, free_port()), &Fingerprint::new(), &quick)
        .err()
        .unwrap();
    assert!(e.contains("could not reach the master") && !e.contains('\n'), "{e}");
    // And the master alone: nobody joins.
    let e = connect(&info(0, 3, free_port()), &Fingerprint::new(), &quick)
        .err()
        .unwrap();
    assert!(e.contains("rank(s) 1, 2 did not join"), "{e}");
}

#[test]
fn a_dead_rank_is_named_by_every_other_rank() {
    let errs = on_ranks(4, vec![Fingerprint::new(); 4], |r, c| {
        let mut c = c.unwrap();
        let mut v = vec![1.0f32; 100];
        c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
        if r == 2 {
            drop(c); // dies: its sockets close.
            return None;
        }
        let mut errors = None;
        for _ in 0..3 {
            if let Err(e) = c.all_reduce(&mut v, ReduceOp::Sum) {
                errors = Some(e.to_string());
                break;
            }
        }
        errors
    });
    for (r, e) in errs.iter().enumerate() {
        if r == 2 {
            continue;
        }
        let e = e.as_ref().unwrap_or_else(|| panic!("rank {r} did not fail"));
        assert!(e.contains("rank 2 failed"), "rank {r}: {e}");
    }
}

#[test]
fn an_abort_carries_its_reason_to_the_others() {
    let errs = on_ranks(3, vec![Fingerprint::new(); 3], |r, c| {
        let mut c = c.unwrap();
        if r == 1 {
            c.abort("the loss became NaN at step 7");
            return None;
        }
        let mut v = vec![0.0f32; 10];
        Some(c.all_reduce(&mut v, ReduceOp::Sum).unwrap_err().to_string())
    });
    for e in errs.iter().flatten() {
        assert_eq!(e, "rank 1 failed: the loss became NaN at step 7");
    }
}

#[test]
fn a_hung_rank_is_named_by_every_other_rank_not_the_ranks_waiting_behind_it() {
    // Rank 1 stops calling collectives for longer than the deadline; the others wait in an all-reduce.
    // Only rank 2 hears nothing from its left; ranks 3 and 0 hear heartbeats, then the abort naming rank 1.
    let quick = Timeouts {
        connect: Duration::from_secs(30),
        op: Duration::from_secs(2),
    };
    let port = free_port();
    let handles: Vec<_> = (0..4)
        .map(|r| {
            std::thread::spawn(move || {
                let mut c = connect(&info(r, 4, port), &Fingerprint::new(), &quick).unwrap();
                let mut v = vec![1.0f32; 1000];
                c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                if r == 1 {
                    std::thread::sleep(Duration::from_secs(6));
                    return None;
                }
                Some(c.all_reduce(&mut v, ReduceOp::Sum).unwrap_err().to_string())
            })
        })
        .collect();
    for (r, h) in handles.into_iter().enumerate() {
        if let Some(e) = h.join().unwrap() {
            assert!(e.starts_with("rank 1 failed: sent nothing for 2 s"), "rank {r}: {e}");
        }
    }
}
