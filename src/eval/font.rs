//! A small built-in bitmap font (printable ASCII, drawn for tchcv), so labels on detections
//! need no font files. Each glyph is 5 columns by 9 rows: rows 0-6 from the cap line to the
//! baseline, rows 7-8 for descenders. Other characters draw as `?`.

use std::sync::OnceLock;

/// Glyph width and height in font pixels.
pub const GLYPH_W: u32 = 5;
pub const GLYPH_H: u32 = 9;
/// Horizontal advance (glyph plus one column of spacing).
pub const ADVANCE: u32 = GLYPH_W + 1;

/// One line per glyph: the character, then its rows top-down (`#` = ink); rows not given are
/// blank. The space is implicit.
const GLYPHS: &str = "
0 .###. #...# #..## #.#.# ##..# #...# .###.
1 ..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.
2 .###. #...# ....# ...#. ..#.. .#... #####
3 ##### ...#. ..#.. ...#. ....# #...# .###.
4 ...#. ..##. .#.#. #..#. ##### ...#. ...#.
5 ##### #.... ####. ....# ....# #...# .###.
6 ..##. .#... #.... ####. #...# #...# .###.
7 ##### ....# ...#. ..#.. .#... .#... .#...
8 .###. #...# #...# .###. #...# #...# .###.
9 .###. #...# #...# .#### ....# ...#. .##..
A .###. #...# #...# ##### #...# #...# #...#
B ####. #...# #...# ####. #...# #...# ####.
C .###. #...# #.... #.... #.... #...# .###.
D ###.. #..#. #...# #...# #...# #..#. ###..
E ##### #.... #.... ####. #.... #.... #####
F ##### #.... #.... ####. #.... #.... #....
G .###. #...# #.... #.### #...# #...# .####
H #...# #...# #...# ##### #...# #...# #...#
I .###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
J ..### ...#. ...#. ...#. ...#. #..#. .##..
K #...# #..#. #.#.. ##... #.#.. #..#. #...#
L #.... #.... #.... #.... #.... #.... #####
M #...# ##.## #.#.# #.#.# #...# #...# #...#
N #...# #...# ##..# #.#.# #..## #...# #...#
O .###. #...# #...# #...# #...# #...# .###.
P ####. #...# #...# ####. #.... #.... #....
Q .###. #...# #...# #...# #.#.# #..#. .##.#
R ####. #...# #...# ####. #.#.. #..#. #...#
S .#### #.... #.... .###. ....# ....# ####.
T ##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
U #...# #...# #...# #...# #...# #...# .###.
V #...# #...# #...# #...# #...# .#.#. ..#..
W #...# #...# #...# #.#.# #.#.# #.#.# .#.#.
X #...# #...# .#.#. ..#.. .#.#. #...# #...#
Y #...# #...# .#.#. ..#.. ..#.. ..#.. ..#..
Z ##### ....# ...#. ..#.. .#... #.... #####
a ..... ..... .###. ....# .#### #...# .####
b #.... #.... #.##. ##..# #...# #...# ####.
c ..... ..... .###. #.... #.... #...# .###.
d ....# ....# .##.# #..## #...# #...# .####
e ..... ..... .###. #...# ##### #.... .###.
f ..##. .#..# .#... ###.. .#... .#... .#...
g ..... ..... .#### #...# #...# #...# .#### ....# .###.
h #.... #.... #.##. ##..# #...# #...# #...#
i ..#.. ..... .##.. ..#.. ..#.. ..#.. .###.
j ...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..
k #.... #.... #..#. #.#.. ##... #.#.. #..#.
l .##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
m ..... ..... ##.#. #.#.# #.#.# #...# #...#
n ..... ..... #.##. ##..# #...# #...# #...#
o ..... ..... .###. #...# #...# #...# .###.
p ..... ..... ####. #...# #...# #...# ####. #.... #....
q ..... ..... .#### #...# #...# #...# .#### ....# ....#
r ..... ..... #.##. ##..# #.... #.... #....
s ..... ..... .###. #.... .###. ....# ####.
t .#... .#... ###.. .#... .#... .#..# ..##.
u ..... ..... #...# #...# #...# #..## .##.#
v ..... ..... #...# #...# #...# .#.#. ..#..
w ..... ..... #...# #...# #.#.# #.#.# .#.#.
x ..... ..... #...# .#.#. ..#.. .#.#. #...#
y ..... ..... #...# #...# #...# #...# .#### ....# .###.
z ..... ..... ##### ...#. ..#.. .#... #####
! ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..
\" .#.#. .#.#. .#.#.
# .#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.
$ ..#.. .#### #.#.. .###. ..#.# ####. ..#..
% ##... ##..# ...#. ..#.. .#... #..## ...##
& .##.. #..#. #.#.. .#... #.#.# #..#. .##.#
' ..#.. ..#.. ..#..
( ...#. ..#.. .#... .#... .#... ..#.. ...#.
) .#... ..#.. ...#. ...#. ...#. ..#.. .#...
* ..... ..#.. #.#.# .###. #.#.# ..#.. .....
+ ..... ..#.. ..#.. ##### ..#.. ..#.. .....
, ..... ..... ..... ..... ..... .##.. ..#.. .#...
- ..... ..... ..... ##### ..... ..... .....
. ..... ..... ..... ..... ..... .##.. .##..
/ ..... ....# ...#. ..#.. .#... #.... .....
: ..... .##.. .##.. ..... .##.. .##.. .....
; ..... .##.. .##.. ..... .##.. ..#.. .#...
< ...#. ..#.. .#... #.... .#... ..#.. ...#.
= ..... ..... ##### ..... ##### ..... .....
> .#... ..#.. ...#. ....# ...#. ..#.. .#...
? .###. #...# ....# ...#. ..#.. ..... ..#..
@ .###. #...# ....# .##.# #.#.# #.#.# .###.
[ .###. .#... .#... .#... .#... .#... .###.
\\ ..... #.... .#... ..#.. ...#. ....# .....
] .###. ...#. ...#. ...#. ...#. ...#. .###.
^ ..#.. .#.#. #...#
_ ..... ..... ..... ..... ..... ..... ..... #####
` .#... ..#.. ...#.
{ ...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.
| ..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
} .#... ..#.. ..#.. ...#. ..#.. ..#.. .#...
~ ..... ..... .#... #.#.# ...#.
";

/// Rows of one glyph as bit masks (bit 4 = leftmost column).
type Glyph = [u8; GLYPH_H as usize];

/// Glyphs for ASCII 32..=126, index `c - 32`.
fn table() -> &'static [Glyph; 95] {
    static TABLE: OnceLock<[Glyph; 95]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [[0u8; GLYPH_H as usize]; 95];
        for line in GLYPHS.lines() {
            let mut tokens = line.split(' ');
            let Some(c) = tokens.next().and_then(|t| t.chars().next()) else {
                continue;
            };
            let index = (c as usize).wrapping_sub(32);
            let Some(glyph) = table.get_mut(index) else {
                continue;
            };
            for (row, token) in glyph.iter_mut().zip(tokens) {
                *row = token
                    .bytes()
                    .fold(0u8, |bits, b| (bits << 1) | u8::from(b == b'#'));
            }
        }
        table
    })
}

/// The glyph of `c` (`?` for characters outside printable ASCII).
pub fn glyph(c: char) -> &'static Glyph {
    let index = match c {
        ' '..='~' => c as usize - 32,
        _ => '?' as usize - 32,
    };
    &table()[index]
}

/// Whether font pixel (`col`, `row`) of `c` is ink.
pub fn ink(c: char, col: u32, row: u32) -> bool {
    col < GLYPH_W && row < GLYPH_H && glyph(c)[row as usize] & (1 << (GLYPH_W - 1 - col)) != 0
}

/// The width in font pixels of `text` (no trailing spacing).
pub fn text_width(text: &str) -> u32 {
    let n = text.chars().count() as u32;
    (n * ADVANCE).saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_printable_ascii_glyph_is_defined_and_well_formed() {
        let mut defined = std::collections::HashSet::new();
        for line in GLYPHS.lines().filter(|l| !l.is_empty()) {
            let tokens: Vec<&str> = line.split(' ').collect();
            let c = tokens[0].chars().next().unwrap();
            assert_eq!(tokens[0].chars().count(), 1, "glyph name {:?}", tokens[0]);
            assert!(defined.insert(c), "glyph {c:?} defined twice");
            assert!(
                tokens.len() - 1 <= GLYPH_H as usize,
                "glyph {c:?}: too many rows"
            );
            for row in &tokens[1..] {
                assert!(
                    row.len() == GLYPH_W as usize && row.bytes().all(|b| b == b'#' || b == b'.'),
                    "glyph {c:?}: bad row {row:?}"
                );
            }
            assert!(glyph(c).iter().any(|&r| r != 0), "glyph {c:?} is blank");
        }
        for c in '!'..='~' {
            assert!(defined.contains(&c), "glyph {c:?} missing");
        }
        assert!(glyph(' ').iter().all(|&r| r == 0));
        assert_eq!(glyph('é'), glyph('?'));
        assert!(ink('T', 0, 0) && ink('T', 4, 0) && !ink('T', 0, 1));
        assert_eq!(text_width("ab"), 11);
    }
}
