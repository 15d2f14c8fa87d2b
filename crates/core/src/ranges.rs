//! The byte ranges of an image that a sparse run writes and reads back.
//!
//! A block map (bmaptool's `.bmap`, or one generated from a file system's
//! allocation) says which blocks of an image hold data that matters. The
//! engine sees it as [`DataRanges`]: sorted, disjoint, non-empty byte ranges
//! inside the image. Everything outside them is neither written nor read back
//! by a sparse run: the stick keeps whatever it held there.

use serde::{Deserialize, Serialize};

/// Why a list of ranges is not a valid [`DataRanges`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangesError {
    /// A range is empty.
    #[error("the range at offset {offset} is empty")]
    Empty {
        /// Where it starts.
        offset: u64,
    },
    /// A range ends past the image (or its end overflows).
    #[error(
        "the range at offset {offset} of {len} bytes ends past the image's {image_size} bytes"
    )]
    PastEnd {
        /// Where it starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The image's size.
        image_size: u64,
    },
    /// A range starts before the end of the one before it.
    #[error("the range at offset {offset} overlaps or precedes the one before it")]
    Unordered {
        /// Where it starts.
        offset: u64,
    },
}

/// Sorted, disjoint, non-empty byte ranges `(offset, len)` of an image of
/// `image_size` bytes. Adjacent ranges are merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RangesRepr", into = "RangesRepr")]
pub struct DataRanges {
    image_size: u64,
    ranges: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct RangesRepr {
    image_size: u64,
    ranges: Vec<(u64, u64)>,
}

impl TryFrom<RangesRepr> for DataRanges {
    type Error = RangesError;

    fn try_from(repr: RangesRepr) -> Result<Self, Self::Error> {
        DataRanges::new(repr.image_size, repr.ranges)
    }
}

impl From<DataRanges> for RangesRepr {
    fn from(ranges: DataRanges) -> Self {
        RangesRepr {
            image_size: ranges.image_size,
            ranges: ranges.ranges,
        }
    }
}

impl DataRanges {
    /// Checks `ranges` (in order, disjoint, non-empty, inside the image) and
    /// merges the adjacent ones.
    pub fn new(
        image_size: u64,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<Self, RangesError> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (offset, len) in ranges {
            if len == 0 {
                return Err(RangesError::Empty { offset });
            }
            if offset.checked_add(len).is_none_or(|end| end > image_size) {
                return Err(RangesError::PastEnd {
                    offset,
                    len,
                    image_size,
                });
            }
            match out.last_mut() {
                Some((o, l)) if *o + *l > offset => {
                    return Err(RangesError::Unordered { offset });
                }
                Some((o, l)) if *o + *l == offset => *l += len,
                _ => out.push((offset, len)),
            }
        }
        Ok(Self {
            image_size,
            ranges: out,
        })
    }

    /// The whole image as one range (nothing skipped).
    pub fn whole(image_size: u64) -> Self {
        Self {
            image_size,
            ranges: if image_size == 0 {
                Vec::new()
            } else {
                vec![(0, image_size)]
            },
        }
    }

    /// The size of the image the ranges lie in.
    pub fn image_size(&self) -> u64 {
        self.image_size
    }

    /// The ranges, `(offset, len)`, in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Bytes inside the ranges.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|(_, len)| len).sum()
    }

    /// Bytes of the image outside the ranges.
    pub fn skipped_bytes(&self) -> u64 {
        self.image_size - self.mapped_bytes()
    }

    /// The same ranges widened outwards to whole blocks of `block` bytes (a
    /// power of two), the last one clipped at the image's end: what direct
    /// I/O on a device with that logical block size can write and read.
    pub fn aligned_to(&self, block: u64) -> Self {
        let block = block.max(1);
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(offset, len) in &self.ranges {
            let start = offset / block * block;
            let end = (offset + len)
                .div_ceil(block)
                .saturating_mul(block)
                .min(self.image_size);
            match out.last_mut() {
                Some((o, l)) if *o + *l >= start => *l = end.max(*o + *l) - *o,
                _ => out.push((start, end - start)),
            }
        }
        Self {
            image_size: self.image_size,
            ranges: out,
        }
    }

    /// The parts of the ranges inside `[offset, offset + len)`, in order.
    pub fn within(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let end = offset.saturating_add(len);
        // The first range that ends after `offset`.
        let first = self.ranges.partition_point(|&(o, l)| o + l <= offset);
        self.ranges[first..]
            .iter()
            .take_while(move |&&(o, _)| o < end)
            .map(move |&(o, l)| {
                let start = o.max(offset);
                (start, (o + l).min(end) - start)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_and_adjacent_ones_merged() {
        let r = DataRanges::new(100, [(0, 10), (10, 5), (20, 80)]).unwrap();
        assert_eq!(r.ranges(), &[(0, 15), (20, 80)]);
        assert_eq!(r.mapped_bytes(), 95);
        assert_eq!(r.skipped_bytes(), 5);
        assert_eq!(
            DataRanges::new(100, [(0, 10), (5, 10)]),
            Err(RangesError::Unordered { offset: 5 })
        );
        assert_eq!(
            DataRanges::new(100, [(90, 11)]),
            Err(RangesError::PastEnd {
                offset: 90,
                len: 11,
                image_size: 100
            })
        );
        assert!(DataRanges::new(100, [(u64::MAX, 2)]).is_err());
        assert_eq!(
            DataRanges::new(100, [(3, 0)]),
            Err(RangesError::Empty { offset: 3 })
        );
    }

    #[test]
    fn alignment_widens_to_blocks_and_stops_at_the_image_end() {
        let r = DataRanges::new(5000, [(100, 10), (600, 10), (4700, 300)]).unwrap();
        assert_eq!(r.aligned_to(512).ranges(), &[(0, 1024), (4608, 392)]);
        assert_eq!(r.aligned_to(4096).ranges(), &[(0, 5000)]);
    }

    #[test]
    fn within_cuts_ranges_at_a_window() {
        let r = DataRanges::new(100, [(0, 10), (20, 30), (60, 40)]).unwrap();
        let cut: Vec<_> = r.within(5, 60).collect();
        assert_eq!(cut, vec![(5, 5), (20, 30), (60, 5)]);
        assert_eq!(r.within(10, 10).count(), 0);
        assert_eq!(r.within(95, 100).collect::<Vec<_>>(), vec![(95, 5)]);
    }

    #[test]
    fn serde_refuses_ranges_that_are_not_valid() {
        let bad = r#"{"image_size":10,"ranges":[[5,6]]}"#;
        assert!(serde_json::from_str::<DataRanges>(bad).is_err());
        let good = DataRanges::new(10, [(2, 3)]).unwrap();
        let text = serde_json::to_string(&good).unwrap();
        assert_eq!(serde_json::from_str::<DataRanges>(&text).unwrap(), good);
    }
}
