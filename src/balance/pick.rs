//! Picking one endpoint from a table.
//!
//! Every picker is O(1) except [`Picker::Weighted`], which is a binary search over running
//! weight sums (O(log n)). None of them allocates or takes a lock: loads are atomics, the
//! random generator is one atomic add, round robin is one atomic increment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;

use super::Picker;
use super::table::{Slot, Table};
use crate::rng::Rng;

/// Why no endpoint could be picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoPick {
    /// The table is empty.
    Empty,
    /// Every endpoint is at its concurrency cap.
    AtCapacity,
    /// No endpoint is healthy, and too few are for panic mode to use them all.
    Unhealthy,
}

/// What restricts a pick.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Constraints<'a> {
    /// Endpoints already tried by this request: skipped while any other is allowed.
    pub(crate) avoid: &'a [SocketAddr],
    /// The per-endpoint cap on requests in flight.
    pub(crate) max_per_endpoint: Option<u64>,
    /// Endpoints currently unhealthy (ejected or breaker not closed), for the fast path and
    /// panic mode.
    pub(crate) unhealthy: usize,
    /// Panic below this percentage of healthy endpoints (0 disables panic mode).
    pub(crate) panic_threshold: u8,
    pub(crate) now: Instant,
}

/// A picked slot, and whether panic mode picked it.
pub(crate) struct Choice<'t, S> {
    pub(crate) slot: &'t Arc<Slot<S>>,
    pub(crate) panic: bool,
}

/// Chooses a slot under `constraints`.
///
/// 1. With nothing to avoid, no cap and every endpoint healthy: the picker's plain rule.
/// 2. Panic mode (Envoy's): when fewer than `panic_threshold` percent of the endpoints are
///    healthy, health is ignored and every endpoint under its cap can be picked.
/// 3. Otherwise the picker's rule over available endpoints under their cap, avoiding the ones
///    already tried; then without avoiding them (a repeat beats no attempt).
pub(crate) fn pick<'t, S>(
    picker: Picker,
    table: &'t Table<S>,
    rng: &Rng,
    round_robin: &AtomicUsize,
    constraints: Constraints<'_>,
) -> Result<Choice<'t, S>, NoPick> {
    let slots = &table.slots;
    let n = slots.len();
    if n == 0 {
        return Err(NoPick::Empty);
    }
    let found = |slot| Ok(Choice { slot, panic: false });
    let Constraints {
        avoid,
        max_per_endpoint,
        unhealthy,
        panic_threshold,
        now,
    } = constraints;
    if avoid.is_empty() && max_per_endpoint.is_none() && unhealthy == 0 {
        return found(plain(picker, table, rng, round_robin, now));
    }
    let under_cap = |i: usize| max_per_endpoint.is_none_or(|max| slots[i].load.in_flight() < max);
    let available = |i: usize| slots[i].health.is_available(now);
    let fresh = |i: usize| !avoid.contains(&slots[i].endpoint.addr());
    let retry = !avoid.is_empty();
    // One draw per pick, shared by every pass below: a round-robin turn is taken once.
    let draw = match picker {
        // A retry's pick takes no turn: with two endpoints, the failing one would otherwise
        // receive every first attempt.
        Picker::RoundRobin if !retry => round_robin.fetch_add(1, Ordering::Relaxed) % n,
        Picker::Weighted => weighted_index(table, rng),
        _ => rng.below(n),
    };
    let allowed = |filter: &dyn Fn(usize) -> bool| pick_allowed(picker, table, rng, draw, filter);
    let healthy_percent = 100 * (n - unhealthy.min(n)) / n;
    let panic =
        panic_threshold > 0 && unhealthy > 0 && healthy_percent < usize::from(panic_threshold);
    let choice = if panic {
        // Envoy's panic mode: too few endpoints are healthy to carry the traffic, so spread it
        // over all of them, health ignored (caps still hold).
        allowed(&|i| fresh(i) && under_cap(i)).or_else(|| allowed(&under_cap))
    } else {
        (if retry {
            allowed(&|i| fresh(i) && under_cap(i) && available(i))
        } else {
            None
        })
        .or_else(|| allowed(&|i| under_cap(i) && available(i)))
    };
    match choice {
        Some(i) => Ok(Choice {
            slot: &slots[i],
            panic,
        }),
        None if (0..n).all(|i| !under_cap(i)) => Err(NoPick::AtCapacity),
        None => Err(NoPick::Unhealthy),
    }
}

/// The picker's rule over every slot of a non-empty table.
fn plain<'t, S>(
    picker: Picker,
    table: &'t Table<S>,
    rng: &Rng,
    round_robin: &AtomicUsize,
    now: Instant,
) -> &'t Arc<Slot<S>> {
    let slots = &table.slots;
    let n = slots.len();
    if n == 1 {
        return &slots[0];
    }
    match picker {
        Picker::P2cPeakEwma => p2c(slots, rng, |slot| {
            slot.load.peak_ewma_cost(now, slot.endpoint.weight())
        }),
        Picker::P2cLeastRequest => p2c(slots, rng, |slot| {
            slot.load.in_flight_cost(slot.endpoint.weight())
        }),
        Picker::RoundRobin => &slots[round_robin.fetch_add(1, Ordering::Relaxed) % n],
        Picker::Random => &slots[rng.below(n)],
        Picker::Weighted => &slots[weighted_index(table, rng)],
    }
}

/// The picker's rule restricted to slots where `allowed` holds, starting from the pick's `draw`;
/// `None` if it holds nowhere.
///
/// A draw that lands on a slot that is not allowed moves on to the next allowed slot in table
/// order. That tilts the choice toward slots that follow excluded ones; with P2C the second
/// candidate is drawn at random again, which keeps the tilt small.
fn pick_allowed<S>(
    picker: Picker,
    table: &Table<S>,
    rng: &Rng,
    draw: usize,
    allowed: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let n = table.slots.len();
    let next_allowed = |from: usize, except: Option<usize>| {
        (0..n)
            .map(|k| (from + k) % n)
            .find(|&i| Some(i) != except && allowed(i))
    };
    let first = next_allowed(draw, None)?;
    let cost: fn(&Slot<S>, Instant) -> f64 = match picker {
        Picker::P2cPeakEwma => |slot, now| slot.load.peak_ewma_cost(now, slot.endpoint.weight()),
        Picker::P2cLeastRequest => |slot, _| slot.load.in_flight_cost(slot.endpoint.weight()),
        _ => return Some(first),
    };
    let Some(second) = next_allowed(rng.below(n), Some(first)) else {
        return Some(first);
    };
    let now = Instant::now();
    let (a, b) = (&table.slots[first], &table.slots[second]);
    Some(if cost(b, now) < cost(a, now) {
        second
    } else {
        first
    })
}

/// A slot index drawn with probability proportional to its weight.
fn weighted_index<S>(table: &Table<S>, rng: &Rng) -> usize {
    let total = table.total_weight();
    let target = ((u128::from(rng.next_u64()) * u128::from(total)) >> 64) as u64;
    let index = table
        .cumulative_weights
        .partition_point(|&sum| sum <= target);
    index.min(table.slots.len().saturating_sub(1))
}

/// Power of two choices over two distinct slots (`slots.len() >= 2`): the lower cost wins, a
/// tie goes to the first drawn (tower's `sample_floyd2` draws the pair the same way).
fn p2c<'t, S>(
    slots: &'t [Arc<Slot<S>>],
    rng: &Rng,
    cost: impl Fn(&Slot<S>) -> f64,
) -> &'t Arc<Slot<S>> {
    let n = slots.len();
    let a = rng.below(n);
    let mut b = rng.below(n - 1);
    if b >= a {
        b += 1;
    }
    let (first, second) = (&slots[a], &slots[b]);
    if cost(second) < cost(first) {
        second
    } else {
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::BalanceConfig;
    use crate::discover::{Endpoint, Update};
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn table(weights: &[u32]) -> Table<()> {
        let endpoints = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Endpoint::new(([127, 0, 0, 1], 1 + i as u16).into()).with_weight(w))
            .collect();
        let make = |_: &Endpoint| ();
        Table::empty()
            .apply(Update::Reset(endpoints), &make, &BalanceConfig::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn shares(picker: Picker, table: &Table<()>, draws: usize) -> HashMap<SocketAddr, usize> {
        let rng = Rng::seeded(42);
        let rr = AtomicUsize::new(0);
        let mut counts = HashMap::new();
        for _ in 0..draws {
            let slot = pick(picker, table, &rng, &rr, constraints(&[]))
                .unwrap()
                .slot;
            *counts.entry(slot.endpoint.addr()).or_default() += 1;
        }
        counts
    }

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    fn constraints(avoid: &[SocketAddr]) -> Constraints<'_> {
        Constraints {
            avoid,
            max_per_endpoint: None,
            unhealthy: 0,
            panic_threshold: 50,
            now: Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_at_their_cap_are_skipped_until_all_are() {
        let t = table(&[1, 1, 1]);
        let rng = Rng::seeded(3);
        let rr = AtomicUsize::new(0);
        let capped = |avoid| Constraints {
            max_per_endpoint: Some(2),
            ..constraints(avoid)
        };
        t.slots[0].load.start();
        t.slots[0].load.start();
        for picker in [Picker::P2cPeakEwma, Picker::RoundRobin, Picker::Random] {
            for _ in 0..300 {
                let slot = pick(picker, &t, &rng, &rr, capped(&[])).unwrap().slot;
                assert_ne!(slot.endpoint.addr(), addr(1), "{picker:?}");
            }
        }
        for slot in &t.slots[1..] {
            slot.load.start();
            slot.load.start();
        }
        assert_eq!(
            pick(Picker::P2cPeakEwma, &t, &rng, &rr, capped(&[])).err(),
            Some(NoPick::AtCapacity)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn avoided_endpoints_are_skipped_while_others_remain() {
        let t = table(&[1, 1, 1, 1]);
        let rng = Rng::seeded(9);
        let rr = AtomicUsize::new(0);
        for picker in [
            Picker::P2cPeakEwma,
            Picker::P2cLeastRequest,
            Picker::RoundRobin,
            Picker::Random,
            Picker::Weighted,
        ] {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..1_000 {
                let slot = pick(picker, &t, &rng, &rr, constraints(&[addr(1), addr(3)]))
                    .unwrap()
                    .slot;
                seen.insert(slot.endpoint.addr());
            }
            let mut seen: Vec<_> = seen.into_iter().collect();
            seen.sort();
            assert_eq!(seen, [addr(2), addr(4)], "{picker:?}");
            // Every endpoint avoided: avoidance is dropped rather than failing the pick.
            let all = [addr(1), addr(2), addr(3), addr(4)];
            assert!(
                pick(picker, &t, &rng, &rr, constraints(&all)).is_ok(),
                "{picker:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn avoidance_keeps_the_lower_cost_choice() {
        // Of the two endpoints left, the idle one always wins.
        let t = table(&[1, 1, 1]);
        for _ in 0..3 {
            t.slots[1].load.start();
        }
        let rng = Rng::seeded(5);
        let rr = AtomicUsize::new(0);
        for _ in 0..1_000 {
            let slot = pick(
                Picker::P2cLeastRequest,
                &t,
                &rng,
                &rr,
                constraints(&[addr(1)]),
            )
            .unwrap()
            .slot;
            assert_eq!(slot.endpoint.addr(), addr(3));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_over_distinct_pairs_never_picks_the_busier_of_two() {
        for picker in [Picker::P2cPeakEwma, Picker::P2cLeastRequest] {
            let t = table(&[1, 1]);
            for _ in 0..5 {
                t.slots[1].load.start();
            }
            let counts = shares(picker, &t, 10_000);
            assert_eq!(counts.get(&addr(1)), Some(&10_000), "{picker:?}");
            assert_eq!(counts.get(&addr(2)), None, "{picker:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_favours_the_lowest_cost() {
        // Endpoint i has i requests in flight: it wins every pair drawn with a busier one, so
        // the busiest never wins.
        let t = table(&[1; 10]);
        for (i, slot) in t.slots.iter().enumerate() {
            for _ in 0..i {
                slot.load.start();
            }
        }
        let counts = shares(Picker::P2cLeastRequest, &t, 100_000);
        assert_eq!(counts.get(&addr(10)), None);
        // Endpoint i wins when drawn with a busier one: P = 2·(9 − i)/90.
        for i in 0..9u16 {
            let expected = 100_000.0 * 2.0 * f64::from(9 - i) / 90.0;
            let got = counts[&addr(i + 1)] as f64;
            assert!(
                (got - expected).abs() < expected * 0.05 + 50.0,
                "endpoint {i}: {got} vs {expected}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn weights_divide_the_cost() {
        // Same in-flight count; weight 4 makes the cost a quarter.
        let t = table(&[1, 4]);
        t.slots[0].load.start();
        t.slots[1].load.start();
        let counts = shares(Picker::P2cLeastRequest, &t, 1_000);
        assert_eq!(counts.get(&addr(2)), Some(&1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_picks_follow_weights() {
        let t = table(&[1, 2, 7]);
        let counts = shares(Picker::Weighted, &t, 100_000);
        for (port, weight) in [(1u16, 1.0f64), (2, 2.0), (3, 7.0)] {
            let expected = 100_000.0 * weight / 10.0;
            let got = counts[&addr(port)] as f64;
            // Four standard deviations of a binomial count.
            let sigma = (100_000.0 * weight / 10.0 * (1.0 - weight / 10.0)).sqrt();
            assert!(
                (got - expected).abs() < 4.0 * sigma,
                "{port}: {got} vs {expected}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_takes_turns() {
        let t = table(&[1, 5, 1]);
        let counts = shares(Picker::RoundRobin, &t, 3_000);
        assert!(counts.values().all(|&c| c == 1_000), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn random_is_uniform() {
        let t = table(&[1, 5, 1, 1]);
        let counts = shares(Picker::Random, &t, 40_000);
        let sigma = (40_000.0f64 * 0.25 * 0.75).sqrt();
        for count in counts.values() {
            assert!((*count as f64 - 10_000.0).abs() < 4.0 * sigma, "{counts:?}");
        }
    }
}
