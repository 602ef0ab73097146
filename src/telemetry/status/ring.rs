//! The last hour, minute by minute: a ring of 60 buckets of fixed-size
//! counters. Memory is the same whatever the traffic: a bucket is reused
//! (and cleared) when its minute comes round again.

use super::Counts;

/// Buckets in the ring: one per minute of the last hour.
pub const MINUTES: usize = 60;

#[derive(Debug)]
struct Bucket {
    /// The minute (since the model started) these counts belong to.
    minute: Option<u64>,
    counts: Counts,
}

#[derive(Debug)]
pub struct Ring {
    buckets: Box<[Bucket]>,
}

impl Default for Ring {
    fn default() -> Self {
        let buckets = (0..MINUTES)
            .map(|_| Bucket {
                minute: None,
                counts: Counts::default(),
            })
            .collect();
        Self { buckets }
    }
}

impl Ring {
    /// The counts of `minute`, cleared first if its bucket still holds an
    /// older minute.
    pub fn at(&mut self, minute: u64) -> &mut Counts {
        let b = &mut self.buckets[(minute % MINUTES as u64) as usize];
        if b.minute != Some(minute) {
            b.minute = Some(minute);
            b.counts = Counts::default();
        }
        &mut b.counts
    }

    /// The sum over `now` and the 59 minutes before it.
    pub fn last_hour(&self, now: u64) -> Counts {
        let mut sum = Counts::default();
        for b in self.buckets.iter() {
            if let Some(m) = b.minute
                && m <= now
                && now - m < MINUTES as u64
            {
                sum.add(&b.counts);
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_counts_for_an_hour_then_drops_out() {
        let mut r = Ring::default();
        r.at(0).messages += 1;
        r.at(30).messages += 2;
        assert_eq!(r.last_hour(0).messages, 1);
        assert_eq!(r.last_hour(59).messages, 3);
        // Minute 0 is over an hour old at minute 60.
        assert_eq!(r.last_hour(60).messages, 2);
        assert_eq!(r.last_hour(89).messages, 2);
        assert_eq!(r.last_hour(90).messages, 0);
    }

    #[test]
    fn a_bucket_coming_round_again_starts_from_zero() {
        let mut r = Ring::default();
        r.at(5).messages += 7;
        // Nothing happened for hours; minute 125 shares minute 5's bucket.
        r.at(125).messages += 1;
        assert_eq!(r.last_hour(125).messages, 1);
        assert_eq!(r.buckets.len(), MINUTES);
    }
}
