//! The word filter: pure, no I/O. A [`WordList`] is compiled once into two
//! Aho-Corasick automata (block, mask), rebuilt only when the list changes;
//! checking a message is one normalisation pass plus one scan per automaton.
//!
//! # Seeing through evasions
//!
//! Words and messages go through the same [`normalize`]:
//!
//! * invisible characters (zero-width space/joiner/non-joiner, soft hyphen, BOM,
//!   word joiner, bidi marks, variation selectors, Hangul fillers, tags…) are
//!   dropped, so `d\u{200B}a\u{00AD}rn` reads `darn`;
//! * every other character is replaced by its compatibility decomposition (the
//!   "K" of NFKC: full-width `ｄａｒｎ`, half-width katakana, circled and
//!   styled letters, ligatures…). Two strings are equal under NFKC exactly when
//!   they are equal under NFKD, and decomposing one character at a time keeps
//!   the map back to the original character (composition would merge
//!   neighbours);
//! * then lowercased (`DaRn`, `ＤＡＲＮ`).
//!
//! Every byte of the normalised text remembers which ORIGINAL character it
//! came from, so a mask replaces exactly the original characters of a match —
//! invisible ones inside the match included — with one `*` each.
//!
//! Matching is by substring (no word boundaries): CJK has no spaces, and a
//! boundary rule would let `dar n`-style splits through anyway. A list should
//! therefore hold words long enough not to hit innocent ones.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use unicode_normalization::char::decompose_compatible;

/// Most words in one list (block and mask together).
pub const MAX_WORDS: usize = 100_000;
/// Longest word, in characters as given.
pub const MAX_WORD_CHARS: usize = 64;

/// Why a word list was refused; nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordListError {
    #[error("the list has {count} words, limit is {limit}")]
    TooManyWords { count: usize, limit: usize },
    #[error("{list} word #{index} is empty")]
    EmptyWord { list: &'static str, index: usize },
    #[error("{list} word #{index} is only invisible characters")]
    InvisibleWord { list: &'static str, index: usize },
    #[error("{list} word #{index} is longer than {limit} characters")]
    WordTooLong {
        list: &'static str,
        index: usize,
        limit: usize,
    },
    #[error("{list} word #{index} contains a control character")]
    ControlCharacter { list: &'static str, index: usize },
    #[error("building the automaton: {0}")]
    Build(String),
}

/// A word list as set through the API and kept in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct WordList {
    /// Posts containing one of these are refused.
    pub block: Vec<String>,
    /// Posts are accepted with these masked, one `*` per original character.
    pub mask: Vec<String>,
}

impl WordList {
    /// Checks every word; `Ok` means [`Filter::compile`] will accept the list.
    pub fn validate(&self) -> Result<(), WordListError> {
        let count = self.block.len() + self.mask.len();
        if count > MAX_WORDS {
            return Err(WordListError::TooManyWords {
                count,
                limit: MAX_WORDS,
            });
        }
        for (list, words) in [("block", &self.block), ("mask", &self.mask)] {
            for (index, word) in words.iter().enumerate() {
                if word.is_empty() {
                    return Err(WordListError::EmptyWord { list, index });
                }
                if word.chars().count() > MAX_WORD_CHARS {
                    return Err(WordListError::WordTooLong {
                        list,
                        index,
                        limit: MAX_WORD_CHARS,
                    });
                }
                // Control characters would break the store's one-word-per-line
                // format and are never part of a real word.
                if word.chars().any(char::is_control) {
                    return Err(WordListError::ControlCharacter { list, index });
                }
                if normalize_word(word).is_empty() {
                    return Err(WordListError::InvisibleWord { list, index });
                }
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.block.is_empty() && self.mask.is_empty()
    }

    pub fn len(&self) -> usize {
        self.block.len() + self.mask.len()
    }

    /// A hash of the whole list, so that reloading an unchanged list can
    /// keep its compiled filter instead of compiling it again.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// Characters nobody sees: dropped before matching. Default_Ignorable_Code_Point
/// (Unicode's list of what renderers may skip) plus the Hangul fillers that
/// render as blanks.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                  // soft hyphen
            | '\u{034F}'            // combining grapheme joiner
            | '\u{061C}'            // Arabic letter mark
            | '\u{115F}'..='\u{1160}' // Hangul choseong/jungseong fillers
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}' // Mongolian variation selectors, vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space, ZWNJ, ZWJ, LRM, RLM
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}' // word joiner, invisible operators, bidi isolates
            | '\u{3164}'            // Hangul filler
            | '\u{FE00}'..='\u{FE0F}' // variation selectors
            | '\u{FEFF}'            // BOM / zero-width no-break space
            | '\u{FFA0}'            // half-width Hangul filler
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}' // shorthand format controls
            | '\u{1D173}'..='\u{1D17A}' // musical format controls
            | '\u{E0000}'..='\u{E0FFF}' // tags, variation selectors supplement
    )
}

/// Text as the automata see it, with the way back to the original.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Invisible characters dropped, the rest decomposed and lowercased.
    pub text: String,
    /// For every byte of `text`: the byte offset, in the original, of the
    /// character it came from.
    pub origin: Vec<u32>,
}

/// Normalises `original` for matching (see the module docs). ASCII takes a
/// fast path: no table lookups.
pub fn normalize(original: &str) -> Normalized {
    let mut out = Normalized {
        text: String::with_capacity(original.len()),
        origin: Vec::with_capacity(original.len()),
    };
    for (at, c) in original.char_indices() {
        let at = at as u32;
        if c.is_ascii() {
            out.text.push(c.to_ascii_lowercase());
            out.origin.push(at);
            continue;
        }
        if is_invisible(c) {
            continue;
        }
        decompose_compatible(c, |d| {
            if is_invisible(d) {
                return;
            }
            for l in d.to_lowercase() {
                out.text.push(l);
                out.origin.resize(out.text.len(), at);
            }
        });
    }
    out
}

/// A word as the automata hold it.
pub fn normalize_word(word: &str) -> String {
    normalize(word).text
}

/// What the filter decided for one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No word of the list: post as is.
    Clean,
    /// A block word: refuse.
    Blocked,
    /// Mask words found: post this text instead (`masked` characters starred).
    Masked { text: String, masked: usize },
}

/// One compiled list: an automaton per half, `None` when that half is empty.
#[derive(Debug, Default)]
pub struct Filter {
    block: Option<AhoCorasick>,
    mask: Option<AhoCorasick>,
    words: usize,
    /// [`WordList::fingerprint`] of the list it was compiled from.
    fingerprint: u64,
}

impl Filter {
    /// Validates and compiles `list`. Costs about a second per 100,000 words,
    /// so it runs when a list changes, never per message.
    pub fn compile(list: &WordList) -> Result<Filter, WordListError> {
        list.validate()?;
        Ok(Filter {
            block: automaton(&list.block)?,
            mask: automaton(&list.mask)?,
            words: list.len(),
            fingerprint: list.fingerprint(),
        })
    }

    /// Words in the list the filter was compiled from.
    pub fn words(&self) -> usize {
        self.words
    }

    pub fn is_empty(&self) -> bool {
        self.block.is_none() && self.mask.is_none()
    }

    /// Whether this filter was compiled from `list` (by fingerprint).
    pub fn compiled_from(&self, list: &WordList) -> bool {
        self.fingerprint == list.fingerprint()
    }

    /// Whether the normalised text contains a block word.
    pub fn blocks(&self, text: &Normalized) -> bool {
        self.block
            .as_ref()
            .is_some_and(|ac| ac.is_match(text.text.as_str()))
    }

    /// Marks, in `starred` (one flag per original byte offset of a character
    /// start), every original character covered by a mask word. Returns how
    /// many matches were found.
    pub fn mark(&self, text: &Normalized, starred: &mut [bool]) -> usize {
        let Some(ac) = &self.mask else { return 0 };
        let mut found = 0;
        for m in ac.find_iter(text.text.as_str()) {
            found += 1;
            // From the first character of the match to the last one,
            // including invisible characters dropped in between.
            let first = text.origin[m.start()] as usize;
            let last = text.origin[m.end() - 1] as usize;
            starred[first..=last].fill(true);
        }
        found
    }
}

fn automaton(words: &[String]) -> Result<Option<AhoCorasick>, WordListError> {
    if words.is_empty() {
        return Ok(None);
    }
    let patterns: Vec<String> = words.iter().map(|w| normalize_word(w)).collect();
    AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&patterns)
        .map(Some)
        .map_err(|e| WordListError::Build(e.to_string()))
}

/// Applies several filters (e.g. the global list, then the room's) to one
/// text: blocked if any blocks; else every mask word of every filter starred.
pub fn check<'a>(text: &str, filters: impl IntoIterator<Item = &'a Filter> + Clone) -> Verdict {
    if filters.clone().into_iter().all(Filter::is_empty) {
        return Verdict::Clean;
    }
    let normalized = normalize(text);
    if filters.clone().into_iter().any(|f| f.blocks(&normalized)) {
        return Verdict::Blocked;
    }
    let mut starred = vec![false; text.len()];
    let found: usize = filters
        .into_iter()
        .map(|f| f.mark(&normalized, &mut starred))
        .sum();
    if found == 0 {
        return Verdict::Clean;
    }
    let mut masked = 0;
    let text = text
        .char_indices()
        .map(|(at, c)| {
            if starred[at] {
                masked += 1;
                '*'
            } else {
                c
            }
        })
        .collect();
    Verdict::Masked { text, masked }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(block: &[&str], mask: &[&str]) -> Filter {
        Filter::compile(&WordList {
            block: block.iter().map(|s| s.to_string()).collect(),
            mask: mask.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn masked(f: &Filter, text: &str) -> String {
        match check(text, [f]) {
            Verdict::Masked { text, .. } => text,
            other => panic!("{text:?}: expected masked, got {other:?}"),
        }
    }

    #[test]
    fn mask_replaces_each_matched_character() {
        let f = list(&[], &["darn"]);
        assert_eq!(masked(&f, "hello darn it"), "hello **** it");
        assert_eq!(masked(&f, "darn darn"), "**** ****");
        assert_eq!(check("hello", [&f]), Verdict::Clean);
    }

    #[test]
    fn block_wins_over_mask() {
        let f = list(&["darn"], &["darn", "heck"]);
        assert_eq!(check("heck, darn", [&f]), Verdict::Blocked);
        assert_eq!(masked(&f, "heck"), "****");
    }

    #[test]
    fn case_is_ignored() {
        let f = list(&["Badword"], &["darn"]);
        assert_eq!(check("BADWORD!", [&f]), Verdict::Blocked);
        assert_eq!(check("bAdWoRd", [&f]), Verdict::Blocked);
        assert_eq!(masked(&f, "DaRn it"), "**** it");
    }

    #[test]
    fn full_width_and_half_width_forms_match() {
        let f = list(&["badword", "ｶﾀｶﾅ"], &["darn"]);
        // Full-width Latin.
        assert_eq!(check("ｂａｄｗｏｒｄ", [&f]), Verdict::Blocked);
        assert_eq!(check("ＢＡＤＷＯＲＤ", [&f]), Verdict::Blocked);
        // A half-width word matches its full-width spelling and back.
        assert_eq!(check("カタカナ", [&f]), Verdict::Blocked);
        // Styled letters (mathematical bold) and circled letters.
        assert_eq!(check("𝐛𝐚𝐝𝐰𝐨𝐫𝐝", [&f]), Verdict::Blocked);
        assert_eq!(masked(&f, "ⓓⓐⓡⓝ!"), "****!");
        // The mask stars the original full-width characters, one each.
        assert_eq!(masked(&f, "oh ｄａｒｎ"), "oh ****");
    }

    #[test]
    fn invisible_characters_between_letters_are_seen_through() {
        let f = list(&["badword"], &["darn"]);
        for sep in [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{00AD}',
            '\u{FEFF}',
            '\u{2060}',
            '\u{180E}',
            '\u{FE0F}',
            '\u{E0061}',
        ] {
            let text = format!("b{sep}a{sep}d{sep}w{sep}o{sep}r{sep}d");
            assert_eq!(check(&text, [&f]), Verdict::Blocked, "{sep:?}");
            // Invisible characters inside a match are starred with it; the
            // ones around it are left alone.
            let text = format!("{sep}d{sep}arn{sep} x");
            assert_eq!(masked(&f, &text), format!("{sep}*****{sep} x"), "{sep:?}");
        }
    }

    #[test]
    fn cjk_words_and_evasions() {
        let f = list(&["傻瓜"], &["垃圾"]);
        assert_eq!(check("你是傻瓜吗", [&f]), Verdict::Blocked);
        assert_eq!(check("傻\u{200B}瓜", [&f]), Verdict::Blocked);
        assert_eq!(masked(&f, "这是垃圾游戏"), "这是**游戏");
        assert_eq!(masked(&f, "垃\u{FEFF}圾"), "***");
        // CJK compatibility ideographs decompose to the unified one.
        let f = list(&["\u{F900}"], &[]);
        assert_eq!(check("\u{8C48}", [&f]), Verdict::Blocked);
        // Half-width Hangul matches full Hangul.
        let f = list(&["ㄱ"], &[]);
        assert_eq!(check("ﾡ", [&f]), Verdict::Blocked);
    }

    #[test]
    fn leftmost_longest_masks_the_longer_word() {
        let f = list(&[], &["dam", "damn it"]);
        assert_eq!(masked(&f, "damn it all"), "******* all");
        assert_eq!(masked(&f, "dammit"), "***mit");
    }

    #[test]
    fn several_filters_combine() {
        let global = list(&["evil"], &["darn"]);
        let room = list(&[], &["heck"]);
        assert_eq!(check("heck darn", [&global, &room]), {
            Verdict::Masked {
                text: "**** ****".into(),
                masked: 8,
            }
        });
        assert_eq!(check("evil heck", [&global, &room]), Verdict::Blocked);
        let empty = Filter::default();
        assert_eq!(check("darn", [&empty]), Verdict::Clean);
    }

    #[test]
    fn a_filter_knows_the_list_it_was_compiled_from() {
        let list = |block: &[&str], mask: &[&str]| WordList {
            block: block.iter().map(|s| s.to_string()).collect(),
            mask: mask.iter().map(|s| s.to_string()).collect(),
        };
        let f = Filter::compile(&list(&["a"], &["b"])).unwrap();
        assert!(f.compiled_from(&list(&["a"], &["b"])));
        assert!(!f.compiled_from(&list(&["b"], &["a"])));
        assert!(!f.compiled_from(&list(&["a", "b"], &[])));
        assert!(!f.compiled_from(&list(&[], &["a", "b"])));
    }

    #[test]
    fn bad_words_are_refused() {
        let bad = |block: &[&str]| {
            WordList {
                block: block.iter().map(|s| s.to_string()).collect(),
                mask: vec![],
            }
            .validate()
            .unwrap_err()
        };
        assert!(matches!(bad(&[""]), WordListError::EmptyWord { .. }));
        assert!(matches!(
            bad(&["ok", "\u{200B}\u{FEFF}"]),
            WordListError::InvisibleWord { index: 1, .. }
        ));
        assert!(matches!(
            bad(&["a\nb"]),
            WordListError::ControlCharacter { .. }
        ));
        assert!(matches!(
            bad(&[&"x".repeat(MAX_WORD_CHARS + 1)]),
            WordListError::WordTooLong { .. }
        ));
        let many = WordList {
            block: vec!["x".into(); MAX_WORDS],
            mask: vec!["y".into()],
        };
        assert!(matches!(
            many.validate().unwrap_err(),
            WordListError::TooManyWords { .. }
        ));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn evasion() -> impl Strategy<Value = char> {
            prop::sample::select(vec![
                '\u{200B}', '\u{200C}', '\u{200D}', '\u{00AD}', '\u{FEFF}', '\u{2060}',
            ])
        }

        proptest! {
            /// Every byte of the normalised text points at a character start of
            /// the original, in order.
            #[test]
            fn origin_points_at_original_characters(s in "\\PC{0,40}") {
                let n = normalize(&s);
                prop_assert_eq!(n.origin.len(), n.text.len());
                for w in n.origin.windows(2) {
                    prop_assert!(w[0] <= w[1]);
                }
                for &o in &n.origin {
                    prop_assert!(s.is_char_boundary(o as usize));
                }
            }

            /// A masked text has the original's characters, except starred ones,
            /// and the mask word no longer appears in it.
            #[test]
            fn masking_keeps_length_and_removes_the_word(
                prefix in "[a-z ]{0,10}", suffix in "[a-z ]{0,10}",
                word in "[a-z]{3,8}", seps in prop::collection::vec(evasion(), 0..8),
                upper in any::<bool>(), wide in any::<bool>(),
            ) {
                let mut spelled = String::new();
                for (i, c) in word.chars().enumerate() {
                    let c = if upper { c.to_ascii_uppercase() } else { c };
                    // Full-width forms sit at U+FF01.. for ASCII U+0021..
                    let c = if wide { char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap() } else { c };
                    spelled.push(c);
                    if let Some(&sep) = seps.get(i)
                        && i + 1 < word.len()
                    {
                        spelled.push(sep);
                    }
                }
                let text = format!("{prefix}{spelled}{suffix}");
                let f = Filter::compile(&WordList { block: vec![], mask: vec![word.clone()] }).unwrap();
                match check(&text, [&f]) {
                    Verdict::Masked { text: out, .. } => {
                        prop_assert_eq!(out.chars().count(), text.chars().count());
                        for (a, b) in text.chars().zip(out.chars()) {
                            prop_assert!(a == b || b == '*');
                        }
                        prop_assert!(!normalize(&out).text.contains(&word));
                    }
                    other => prop_assert!(false, "{:?} not masked: {:?}", text, other),
                }
            }
        }
    }
}
