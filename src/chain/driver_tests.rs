//! The driver's rules, each test named after one.

use super::*;

#[test]
fn the_fetch_window_is_this_round_the_next_and_the_next_heights_first_two() {
    let at = (10, 3);
    for (h, r, want) in [
        (10, 3, true),
        (10, 4, true),
        (10, 5, false),
        (10, 2, true),
        (11, 0, true),
        (11, 1, true),
        (11, 2, false),
        (12, 0, false),
    ] {
        assert_eq!(in_fetch_window(at, h, r), want, "height {h} round {r}");
    }
}
