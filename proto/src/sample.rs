//! Realistic danmaku text for benchmarks, load tests and compression tuning:
//! short Chinese and English comments, emoji, and the endless repeats ("666",
//! "哈哈哈哈") that make real barrage traffic so compressible.
//!
//! Deterministic (a seeded xorshift), so benchmark inputs are the same run to run.

use crate::pb;

const PHRASES: &[&str] = &[
    "666",
    "6666666",
    "哈哈哈哈",
    "哈哈哈哈哈哈哈哈",
    "233333",
    "前方高能",
    "awsl",
    "yyds",
    "主播好帅",
    "来了来了",
    "第一次来，关注了",
    "这波操作太秀了",
    "泪目",
    "下次一定",
    "gg",
    "lol",
    "nice shot!",
    "wow",
    "first time here, love it",
    "what song is this?",
    "🔥🔥🔥",
    "😂😂😂",
    "👍",
    "❤️❤️",
    "🎉",
    "草",
    "？？？",
    "妙啊",
    "太强了吧",
    "this is insane",
    "hello from Brazil",
    "早上好",
    "晚上好",
    "打卡",
    "名场面",
    "弹幕护体",
    "空降成功",
    "爷青回",
    "好耶",
    "AAAAAA",
];

/// Seeded generator of comment texts and events.
pub struct CommentGenerator {
    state: u64,
}

impl CommentGenerator {
    pub fn new(seed: u64) -> Self {
        CommentGenerator {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// One comment: usually a stock phrase, sometimes two glued together or a
    /// phrase with a number, like real chat.
    pub fn text(&mut self) -> String {
        let a = PHRASES[(self.next() % PHRASES.len() as u64) as usize];
        match self.next() % 10 {
            0 => format!(
                "{a} {}",
                PHRASES[(self.next() % PHRASES.len() as u64) as usize]
            ),
            1 => format!("{a}{}", self.next() % 1000),
            _ => a.to_owned(),
        }
    }

    /// A sender name from a pool of 5,000 viewers.
    pub fn sender(&mut self) -> String {
        format!("user{}", self.next() % 5000)
    }

    /// `n` danmaku events with ingest timestamps one millisecond apart.
    pub fn events(&mut self, n: usize, start_ms: i64) -> Vec<pb::Event> {
        (0..n)
            .map(|i| pb::Event {
                kind: pb::Kind::Danmaku as i32,
                sender: self.sender(),
                text: self.text(),
                ts_ms: start_ms + i as i64,
                ..Default::default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let a: Vec<String> = (0..50)
            .map({
                let mut g = CommentGenerator::new(1);
                move |_| g.text()
            })
            .collect();
        let mut g = CommentGenerator::new(1);
        let b: Vec<String> = (0..50).map(|_| g.text()).collect();
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 10);
    }
}
