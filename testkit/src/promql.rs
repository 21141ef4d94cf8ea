//! Checks that PromQL in dashboards and rule files names only metrics and labels
//! that processes really export.
//!
//! Sans IO: feed it Prometheus exposition text ([`Exported::add_exposition`]), the
//! recording rules ([`Checker::record`]) and expressions ([`Checker::check`]); it
//! walks each expression's AST (`promql-parser`) and infers the label set of every
//! sub-expression, so `sum by (room) (…)`, a legend `{{room}}` or a one-to-one
//! division whose two sides keep different labels (an always-empty result) is a
//! problem, not a blank graph.
//!
//! Matcher **values** are checked too: `code="token_expird"` selects nothing, so a
//! value (`=`, `!=`) or each branch of a literal alternation (`=~"a|b"`,
//! `=~"danmaku-(edge|ingest)"`) must be one seen in `/metrics` for that metric and
//! label, or one its documentation lists ([`Checker::allow_values`],
//! [`documented_label_values`] reads docs/METRICS.md), or for a target label one
//! the scrape configuration gives ([`Checker::allow_target_values`]). Regexes
//! with other metacharacters (`5..`, `.+`) are not value-checked.

use std::collections::{BTreeMap, BTreeSet};

use promql_parser::label::{Labels, MatchOp};
use promql_parser::parser::{self, Expr, LabelModifier, VectorMatchCardinality};

/// Labels Prometheus adds to every scraped series.
pub const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Metric name → label names (and each label's values) seen in `/metrics` of
/// real processes.
#[derive(Debug, Default, Clone)]
pub struct Exported {
    metrics: BTreeMap<String, BTreeSet<String>>,
    values: BTreeMap<(String, String), BTreeSet<String>>,
}

impl Exported {
    /// Adds every sample line of Prometheus text `exposition`.
    pub fn add_exposition(&mut self, exposition: &str) {
        for line in exposition.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, labels) = match line.split_once('{') {
                Some((name, rest)) => (name, rest.rsplit_once('}').map_or("", |(l, _)| l)),
                None => (line.split_whitespace().next().unwrap_or(""), ""),
            };
            let set = self.metrics.entry(name.to_owned()).or_default();
            for pair in split_labels(labels) {
                if let Some((k, v)) = pair.split_once('=') {
                    let k = k.trim().to_owned();
                    set.insert(k.clone());
                    self.values
                        .entry((name.to_owned(), k))
                        .or_default()
                        .insert(unescape_value(v.trim()));
                }
            }
        }
    }

    /// Values of `label` seen on `metric`.
    pub fn values(&self, metric: &str, label: &str) -> Option<&BTreeSet<String>> {
        self.values.get(&(metric.to_owned(), label.to_owned()))
    }

    pub fn contains(&self, metric: &str) -> bool {
        self.metrics.contains_key(metric)
    }

    /// Label names of `metric` as Prometheus stores it (target labels included).
    pub fn labels(&self, metric: &str) -> Option<BTreeSet<String>> {
        self.metrics.get(metric).map(|l| {
            let mut l = l.clone();
            l.extend(TARGET_LABELS.iter().map(|s| s.to_string()));
            l
        })
    }

    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }
}

/// `"a\"b"` (a quoted exposition label value) → `a"b`.
fn unescape_value(v: &str) -> String {
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The strings a regex matches when it is a finite alternation of literals
/// (`a|b`, `x-(a|b)`, `(?:a|b)c`); `None` when it uses any other metacharacter.
fn literal_alternatives(pattern: &str) -> Option<BTreeSet<String>> {
    fn alt(p: &[char], i: &mut usize) -> Option<Vec<String>> {
        let mut out = seq(p, i)?;
        while *i < p.len() && p[*i] == '|' {
            *i += 1;
            out.extend(seq(p, i)?);
        }
        Some(out)
    }
    fn seq(p: &[char], i: &mut usize) -> Option<Vec<String>> {
        let mut out = vec![String::new()];
        while *i < p.len() && p[*i] != '|' && p[*i] != ')' {
            let part = if p[*i] == '(' {
                *i += 1;
                if p[*i..].starts_with(&['?', ':']) {
                    *i += 2;
                }
                let inner = alt(p, i)?;
                if p.get(*i) != Some(&')') {
                    return None;
                }
                *i += 1;
                inner
            } else if p[*i].is_alphanumeric() || "_-:/ ".contains(p[*i]) {
                *i += 1;
                vec![p[*i - 1].to_string()]
            } else {
                return None;
            };
            out = out
                .iter()
                .flat_map(|a| part.iter().map(move |b| format!("{a}{b}")))
                .collect();
        }
        Some(out)
    }
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let out = alt(&p, &mut i)?;
    (i == p.len()).then(|| out.into_iter().collect())
}

/// `(metric, label, values)` for every label docs/METRICS.md enumerates in its
/// tables (`` `code` = `a` \| `b` ``); a list that ends in `…` (a range such as
/// `rank` = `1` … `N`) or a label named without values is left out.
pub fn documented_label_values(markdown: &str) -> Vec<(String, String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for line in markdown.lines() {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        // Cells are separated by " | "; a value list inside a cell uses "\|".
        let cells: Vec<&str> = row.split(" | ").collect();
        let (Some(metric), Some(labels)) = (cells[0].split('`').next(), cells.get(2)) else {
            continue;
        };
        let parts: Vec<&str> = labels.split('`').collect();
        let mut current: Option<(String, BTreeSet<String>, bool)> = None;
        let mut flush = |c: Option<(String, BTreeSet<String>, bool)>| {
            if let Some((label, values, open)) = c
                && !open
                && !values.is_empty()
            {
                out.push((metric.to_owned(), label, values));
            }
        };
        for i in (1..parts.len()).step_by(2) {
            let before = parts[i - 1].trim();
            let after = parts.get(i + 1).map_or("", |s| s.trim());
            if after.starts_with('=') {
                flush(current.take());
                current = Some((parts[i].to_owned(), BTreeSet::new(), false));
            } else if let Some(c) = current.as_mut()
                && (before == "=" || before == "\\|")
            {
                c.1.insert(parts[i].to_owned());
                if after.starts_with('…') {
                    c.2 = true;
                }
            } else {
                flush(current.take());
            }
        }
        flush(current.take());
    }
    out
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// What an expression evaluates to, as far as labels go.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Scalar,
    String,
    /// An instant or range vector; `None` when its labels cannot be inferred.
    Vector(Option<BTreeSet<String>>),
}

/// Checks expressions against what is exported and what the rule files record.
#[derive(Debug, Default)]
pub struct Checker {
    pub exported: Exported,
    recorded: BTreeMap<String, Option<BTreeSet<String>>>,
    /// `(metric, label)` → values a selector may name: documented ones, and for
    /// recorded metrics those of the series they are computed from.
    allowed: BTreeMap<(String, String), BTreeSet<String>>,
    /// Target label → values the scrape configuration gives (`job`).
    target_values: BTreeMap<String, BTreeSet<String>>,
}

impl Checker {
    pub fn new(exported: Exported) -> Self {
        Checker {
            exported,
            recorded: BTreeMap::new(),
            allowed: BTreeMap::new(),
            target_values: BTreeMap::new(),
        }
    }

    /// Values of `label` on `metric` that selectors may name besides those seen
    /// in `/metrics` (a counter's label value appears only once it is used).
    pub fn allow_values<I, S>(&mut self, metric: &str, label: &str, values: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed
            .entry((metric.to_owned(), label.to_owned()))
            .or_default()
            .extend(values.into_iter().map(Into::into));
    }

    /// The values target label `label` (`job`) takes, from the scrape config;
    /// without them that label's values are not checked.
    pub fn allow_target_values<I, S>(&mut self, label: &str, values: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.target_values
            .entry(label.to_owned())
            .or_default()
            .extend(values.into_iter().map(Into::into));
    }

    /// The values `metric` may carry in `label`; `None` when they are unknown
    /// (then matchers on it are not value-checked).
    fn known_values(&self, metric: &str, label: &str) -> Option<BTreeSet<String>> {
        if TARGET_LABELS.contains(&label) {
            return self.target_values.get(label).cloned();
        }
        let seen = self.exported.values(metric, label);
        let allowed = self.allowed.get(&(metric.to_owned(), label.to_owned()));
        if seen.is_none() && allowed.is_none() {
            return None;
        }
        Some(seen.into_iter().chain(allowed).flatten().cloned().collect())
    }

    fn check_matcher_value(
        &self,
        metric: &str,
        m: &promql_parser::label::Matcher,
        problems: &mut Vec<String>,
    ) {
        let Some(known) = self.known_values(metric, &m.name) else {
            return;
        };
        let wanted = match &m.op {
            MatchOp::Equal | MatchOp::NotEqual if m.value.is_empty() => return,
            MatchOp::Equal | MatchOp::NotEqual => [m.value.clone()].into(),
            MatchOp::Re(_) | MatchOp::NotRe(_) => match literal_alternatives(&m.value) {
                Some(v) => v,
                None => return,
            },
        };
        for v in wanted {
            if !known.contains(&v) {
                problems.push(format!(
                    "{metric}{{{}}} names value {v:?}, which {metric} never has in {:?} (known: {known:?})",
                    m, m.name
                ));
            }
        }
    }

    /// Declares recording rule `name = expr`, checking `expr`. Record rules in
    /// file order (a rule may use the ones above it).
    pub fn record(&mut self, name: &str, expr: &str) -> Result<(), Vec<String>> {
        let shape = self.check(expr)?;
        let labels = match shape {
            Shape::Vector(l) => l,
            _ => Some(BTreeSet::new()),
        };
        // A recorded series' label values are those of the series it is computed
        // from (their union: a superset, enough to catch a misspelt value).
        let sources = selector_names(expr).unwrap_or_default();
        for label in labels.iter().flatten() {
            let mut values = BTreeSet::new();
            let mut all_known = true;
            let mut any = false;
            for src in &sources {
                let has = self.exported.labels(src).map(|l| l.contains(label));
                let has = has.or_else(|| {
                    self.recorded
                        .get(src)
                        .and_then(|l| l.as_ref().map(|l| l.contains(label)))
                });
                if has != Some(true) {
                    continue;
                }
                any = true;
                match self.known_values(src, label) {
                    Some(v) => values.extend(v),
                    None => all_known = false,
                }
            }
            if any && all_known && !TARGET_LABELS.contains(&label.as_str()) {
                self.allow_values(name, label, values);
            }
        }
        self.recorded.insert(name.to_owned(), labels);
        Ok(())
    }

    pub fn is_recorded(&self, name: &str) -> bool {
        self.recorded.contains_key(name)
    }

    /// Parses `expr` and checks every selector, grouping and matching label.
    /// Returns the result's shape, or every problem found.
    pub fn check(&self, expr: &str) -> Result<Shape, Vec<String>> {
        let ast = parser::parse(expr).map_err(|e| vec![format!("does not parse: {e}")])?;
        let mut problems = Vec::new();
        let shape = self.walk(&ast, &mut problems);
        if problems.is_empty() {
            Ok(shape)
        } else {
            Err(problems)
        }
    }

    /// `{{label}}` placeholders of a Grafana legend must be labels of the result.
    pub fn check_legend(&self, shape: &Shape, legend: &str) -> Vec<String> {
        let Shape::Vector(Some(labels)) = shape else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        let mut rest = legend;
        while let Some(i) = rest.find("{{") {
            let Some(j) = rest[i..].find("}}") else { break };
            let name = rest[i + 2..i + j].trim();
            if !labels.contains(name) {
                problems.push(format!(
                    "legend names {{{{{name}}}}} but the result has labels {labels:?}"
                ));
            }
            rest = &rest[i + j + 2..];
        }
        problems
    }

    fn selector_labels(
        &self,
        vs: &promql_parser::parser::VectorSelector,
        problems: &mut Vec<String>,
    ) -> Option<BTreeSet<String>> {
        let name = vs.name.clone().or_else(|| {
            vs.matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
                .map(|m| m.value.clone())
        });
        let Some(name) = name else {
            problems.push(format!("selector {vs} has no metric name"));
            return None;
        };
        let labels = if let Some(l) = self.exported.labels(&name) {
            Some(l)
        } else if let Some(l) = self.recorded.get(&name) {
            l.clone()
        } else if name == "up" {
            Some(TARGET_LABELS.iter().map(|s| s.to_string()).collect())
        } else {
            problems.push(format!("metric {name} is not exported by any process"));
            return None;
        };
        let matchers = vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten());
        if let Some(known) = &labels {
            for m in matchers {
                if m.name == "__name__" {
                    continue;
                }
                if !known.contains(&m.name) {
                    problems.push(format!(
                        "{name} has no label {:?} (it has {known:?})",
                        m.name
                    ));
                } else {
                    self.check_matcher_value(&name, m, problems);
                }
            }
        }
        labels
    }

    fn walk(&self, expr: &Expr, problems: &mut Vec<String>) -> Shape {
        match expr {
            Expr::NumberLiteral(_) => Shape::Scalar,
            Expr::StringLiteral(_) => Shape::String,
            Expr::Paren(p) => self.walk(&p.expr, problems),
            Expr::Unary(u) => self.walk(&u.expr, problems),
            Expr::Subquery(s) => self.walk(&s.expr, problems),
            Expr::VectorSelector(vs) => Shape::Vector(self.selector_labels(vs, problems)),
            Expr::MatrixSelector(ms) => Shape::Vector(self.selector_labels(&ms.vs, problems)),
            Expr::Aggregate(agg) => {
                let inner = match self.walk(&agg.expr, problems) {
                    Shape::Vector(l) => l,
                    _ => Some(BTreeSet::new()),
                };
                if let Some(p) = &agg.param {
                    self.walk(p, problems);
                }
                let op = agg.op.to_string();
                let mut out = match &agg.modifier {
                    Some(LabelModifier::Include(by)) => {
                        require(&inner, by, &format!("{op} by"), problems);
                        if matches!(op.as_str(), "topk" | "bottomk" | "limitk" | "limit_ratio") {
                            inner.clone()
                        } else {
                            Some(by.labels.iter().cloned().collect())
                        }
                    }
                    Some(LabelModifier::Exclude(without)) => inner.clone().map(|mut l| {
                        for x in &without.labels {
                            l.remove(x);
                        }
                        l
                    }),
                    None if matches!(
                        op.as_str(),
                        "topk" | "bottomk" | "limitk" | "limit_ratio"
                    ) =>
                    {
                        inner.clone()
                    }
                    None => Some(BTreeSet::new()),
                };
                if op == "count_values"
                    && let (Some(out), Some(p)) = (&mut out, &agg.param)
                    && let Expr::StringLiteral(s) = p.as_ref()
                {
                    out.insert(s.val.clone());
                }
                Shape::Vector(out)
            }
            Expr::Call(call) => {
                let args: Vec<Shape> = call
                    .args
                    .args
                    .iter()
                    .map(|a| self.walk(a, problems))
                    .collect();
                let first_vector = args.iter().find_map(|a| match a {
                    Shape::Vector(l) => Some(l.clone()),
                    _ => None,
                });
                match call.func.name {
                    "vector" | "time" | "scalar" | "pi" => match call.func.name {
                        "vector" => Shape::Vector(Some(BTreeSet::new())),
                        _ => Shape::Scalar,
                    },
                    "absent" | "absent_over_time" => Shape::Vector(None),
                    "histogram_quantile" => {
                        let l = first_vector.flatten();
                        if let Some(l) = &l
                            && !l.contains("le")
                        {
                            problems.push(format!(
                                "histogram_quantile over labels {l:?} without \"le\""
                            ));
                        }
                        Shape::Vector(l.map(|mut l| {
                            l.remove("le");
                            l
                        }))
                    }
                    "label_replace" | "label_join" => {
                        let strings: Vec<String> = call
                            .args
                            .args
                            .iter()
                            .filter_map(|a| match a.as_ref() {
                                Expr::StringLiteral(s) => Some(s.val.clone()),
                                _ => None,
                            })
                            .collect();
                        Shape::Vector(first_vector.flatten().map(|mut l| {
                            if let Some(dst) = strings.first() {
                                l.insert(dst.clone());
                            }
                            l
                        }))
                    }
                    _ => match first_vector {
                        Some(l) => Shape::Vector(l),
                        None => Shape::Scalar,
                    },
                }
            }
            Expr::Binary(b) => {
                let lhs = self.walk(&b.lhs, problems);
                let rhs = self.walk(&b.rhs, problems);
                let (l, r) = match (&lhs, &rhs) {
                    (Shape::Vector(l), Shape::Vector(r)) => (l.clone(), r.clone()),
                    (Shape::Vector(_), _) => return lhs,
                    (_, Shape::Vector(_)) => return rhs,
                    _ => return Shape::Scalar,
                };
                let op = b.op.to_string();
                let modifier = b.modifier.as_ref();
                let matching = modifier.and_then(|m| m.matching.as_ref());
                let card = modifier.map(|m| &m.card);
                if let Some(LabelModifier::Include(on)) = matching {
                    require(&l, on, &format!("{op} on (left side)"), problems);
                    require(&r, on, &format!("{op} on (right side)"), problems);
                }
                match card {
                    Some(VectorMatchCardinality::ManyToOne(extra)) => {
                        require(&r, extra, "group_left", problems);
                        return Shape::Vector(l.zip(r).map(|(mut l, _)| {
                            l.extend(extra.labels.iter().cloned());
                            l
                        }));
                    }
                    Some(VectorMatchCardinality::OneToMany(extra)) => {
                        require(&l, extra, "group_right", problems);
                        return Shape::Vector(r.zip(l).map(|(mut r, _)| {
                            r.extend(extra.labels.iter().cloned());
                            r
                        }));
                    }
                    _ => {}
                }
                match op.as_str() {
                    "or" => Shape::Vector(l.zip(r).map(|(mut l, r)| {
                        l.extend(r);
                        l
                    })),
                    "and" | "unless" => Shape::Vector(l),
                    _ => {
                        // One-to-one: both sides must keep the same labels (after
                        // on/ignoring), or nothing ever matches.
                        if let (Some(ls), Some(rs)) = (&l, &r) {
                            let project = |s: &BTreeSet<String>| -> BTreeSet<String> {
                                match matching {
                                    Some(LabelModifier::Include(on)) => on
                                        .labels
                                        .iter()
                                        .filter(|x| s.contains(*x))
                                        .cloned()
                                        .collect(),
                                    Some(LabelModifier::Exclude(ign)) => s
                                        .iter()
                                        .filter(|x| !ign.labels.contains(x))
                                        .cloned()
                                        .collect(),
                                    None => s.clone(),
                                }
                            };
                            if project(ls) != project(rs) {
                                problems.push(format!(
                                    "`{op}` matches one-to-one but the sides keep different labels ({ls:?} vs {rs:?}): the result is always empty"
                                ));
                            }
                        }
                        Shape::Vector(match matching {
                            Some(LabelModifier::Include(on)) => {
                                Some(on.labels.iter().cloned().collect())
                            }
                            _ => l,
                        })
                    }
                }
            }
            Expr::Extension(_) => Shape::Vector(None),
        }
    }
}

fn require(have: &Option<BTreeSet<String>>, want: &Labels, what: &str, problems: &mut Vec<String>) {
    if let Some(have) = have {
        for l in &want.labels {
            if !have.contains(l) {
                problems.push(format!(
                    "{what} ({l}) names a label the operand does not have ({have:?})"
                ));
            }
        }
    }
}

/// The metric names `expr` selects (recording rules included).
pub fn selector_names(expr: &str) -> Result<BTreeSet<String>, String> {
    fn walk(e: &Expr, out: &mut BTreeSet<String>) {
        match e {
            Expr::VectorSelector(vs) => out.extend(vs.name.clone()),
            Expr::MatrixSelector(ms) => out.extend(ms.vs.name.clone()),
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            Expr::Aggregate(a) => {
                walk(&a.expr, out);
                if let Some(p) = &a.param {
                    walk(p, out);
                }
            }
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            _ => {}
        }
    }
    let ast = parser::parse(expr)?;
    let mut out = BTreeSet::new();
    walk(&ast, &mut out);
    Ok(out)
}

/// Grafana template variables in `expr`, replaced by values PromQL accepts.
pub fn substitute_grafana_vars(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("${edge}", ".+")
        .replace("$edge", ".+")
}

/// Every panel of a Grafana dashboard, rows' nested panels included.
pub fn dashboard_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(panels: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// One Prometheus query of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    /// As written, with Grafana variables.
    pub expr: String,
    pub legend: String,
}

/// The Prometheus queries of every panel of `dashboard`.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<PanelQuery> {
    dashboard_panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| {
                    Some(PanelQuery {
                        panel: title.clone(),
                        expr: t["expr"].as_str()?.to_owned(),
                        legend: t["legendFormat"].as_str().unwrap_or("").to_owned(),
                    })
                })
        })
        .collect()
}

/// One rule of a Prometheus rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The `record:` or `alert:` name.
    pub name: String,
    pub is_alert: bool,
    pub expr: String,
}

/// The rules of a Prometheus rule file, in order. A small reader for the
/// subset rule files use: `- record:`/`- alert:` followed by `expr:` as a
/// one-line value or a `|` block. Fails (rather than skipping) on anything else
/// that carries an `expr:`.
pub fn rules_from_yaml(text: &str) -> Result<Vec<Rule>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules = Vec::new();
    let mut current: Option<(String, bool)> = None;
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let t = t.strip_prefix("- ").unwrap_or(t);
        if let Some(n) = t.strip_prefix("record:") {
            current = Some((unquote(n), false));
        } else if let Some(n) = t.strip_prefix("alert:") {
            current = Some((unquote(n), true));
        } else if let Some(v) = t.strip_prefix("expr:") {
            let (name, is_alert) = current
                .take()
                .ok_or_else(|| format!("line {}: expr without record/alert", i + 1))?;
            let v = v.trim();
            let expr = if v == "|" || v == "|-" {
                let indent = |s: &str| s.len() - s.trim_start().len();
                let base = indent(lines[i]);
                let mut body = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > base)
                {
                    i += 1;
                    body.push(lines[i].trim());
                }
                body.join("\n").trim().to_owned()
            } else if v.starts_with('>') {
                return Err(format!("line {}: folded expr not supported", i + 1));
            } else {
                unquote(v)
            };
            rules.push(Rule {
                name,
                is_alert,
                expr,
            });
        }
        i += 1;
    }
    let exprs = text
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .count();
    if exprs != rules.len() {
        return Err(format!(
            "read {} rules but the file has {exprs} expr lines",
            rules.len()
        ));
    }
    Ok(rules)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2
        && ((s.starts_with('\'') && s.ends_with('\'')) || (s.starts_with('"') && s.ends_with('"')))
    {
        s[1..s.len() - 1].to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Checker {
        let mut e = Exported::default();
        e.add_exposition(
            "# TYPE a counter\na_total{kind=\"gift\",status=\"200\"} 3\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\ng{rank=\"1\",x=\"a,b\"} 5\nplain 1\n",
        );
        Checker::new(e)
    }

    #[test]
    fn reads_names_and_label_names() {
        let c = checker();
        assert!(c.exported.contains("a_total"));
        assert_eq!(
            c.exported.labels("g").unwrap(),
            ["instance", "job", "rank", "x"].map(String::from).into()
        );
        assert!(c.exported.labels("plain").is_some());
    }

    #[test]
    fn accepts_what_exists_and_infers_labels() {
        let c = checker();
        let s = c
            .check("sum by (kind) (rate(a_total{status=~\"5..\"}[1m]))")
            .unwrap();
        assert_eq!(s, Shape::Vector(Some(["kind".to_string()].into())));
        assert!(c.check_legend(&s, "{{kind}}").is_empty());
        assert_eq!(c.check_legend(&s, "{{status}}").len(), 1);
        let q = c
            .check("histogram_quantile(0.99, sum by (le, instance) (rate(h_bucket[1m])))")
            .unwrap();
        assert_eq!(q, Shape::Vector(Some(["instance".to_string()].into())));
        c.check("sum(up{job=~\"danmaku.*\"}) or vector(0)").unwrap();
        c.check("topk(10, g)").unwrap();
    }

    #[test]
    fn refuses_missing_metrics_labels_and_mismatched_sides() {
        let c = checker();
        assert!(c.check("rate(nope_total[1m])").is_err());
        let e = c.check("a_total{room=\"1\"}").unwrap_err();
        assert!(e[0].contains("room"), "{e:?}");
        assert!(c.check("sum by (room) (a_total)").is_err());
        assert!(
            c.check("histogram_quantile(0.5, sum(rate(h_bucket[1m])))")
                .is_err()
        );
        let e = c
            .check("sum by (kind) (a_total) / sum(a_total)")
            .unwrap_err();
        assert!(e[0].contains("always empty"), "{e:?}");
        c.check("sum by (kind) (a_total) / on () group_left sum(a_total)")
            .unwrap();
        assert!(c.check("sum(").is_err());
    }

    #[test]
    fn refuses_label_values_no_process_has() {
        let mut c = checker();
        c.check("a_total{kind=\"gift\", status=~\"5..\"}").unwrap();
        c.check("a_total{kind=~\"gift|chat\"}").unwrap_err();
        let e = c.check("a_total{kind=\"gfit\"}").unwrap_err();
        assert!(e[0].contains("\"gfit\""), "{e:?}");
        assert!(c.check("a_total{kind!=\"gfit\"}").is_err());
        assert!(
            c.check("g{x=\"a,b\"}").is_ok(),
            "quoted commas stay in the value"
        );
        // Documented values count as known; `=""` (label absent) is always fine.
        c.allow_values("a_total", "kind", ["chat"]);
        c.check("a_total{kind=~\"gift|chat\", status=\"\"}")
            .unwrap();
        // Target labels: checked once the scrape config's values are given.
        c.check("up{job=\"danmaku-nope\"}").unwrap();
        c.allow_target_values("job", ["danmaku-edge", "danmaku-ingest"]);
        c.check("up{job=~\"danmaku-(edge|ingest)\"}").unwrap();
        assert!(c.check("up{job=~\"danmaku-(edge|ingset)\"}").is_err());
        c.check("up{job=~\"danmaku.*\"}").unwrap();
        // Recorded series carry their sources' values.
        c.record("kind:a:rate1m", "sum by (kind) (rate(a_total[1m]))")
            .unwrap();
        c.check("kind:a:rate1m{kind=\"chat\"}").unwrap();
        assert!(c.check("kind:a:rate1m{kind=\"chta\"}").is_err());
    }

    #[test]
    fn expands_literal_alternations_only() {
        let set = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(literal_alternatives("a|b"), set(&["a", "b"]));
        assert_eq!(
            literal_alternatives("danmaku-(edge|standalone)"),
            set(&["danmaku-edge", "danmaku-standalone"])
        );
        assert_eq!(literal_alternatives("(?:x|y)z"), set(&["xz", "yz"]));
        assert_eq!(literal_alternatives("5.."), None);
        assert_eq!(literal_alternatives(".+"), None);
        assert_eq!(literal_alternatives("(a|b"), None);
    }

    #[test]
    fn reads_documented_label_values() {
        let md = "| metric | type | labels | what |\n|---|---|---|---|\n\
            | `m_a` | gauge | `transport` = `ws_json` \\| `quic` | x |\n\
            | `m_b` | counter | `op` = `register` \\| `picks`, `result` = `ok` \\| `error` | a \\| b |\n\
            | `m_c` | gauge | `rank` = `1` … `N` | ranks |\n\
            | `m_d` | counter | `code` | codes (`bad_channel`, …) |\n";
        let got = documented_label_values(md);
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            got,
            vec![
                ("m_a".into(), "transport".into(), v(&["ws_json", "quic"])),
                ("m_b".into(), "op".into(), v(&["register", "picks"])),
                ("m_b".into(), "result".into(), v(&["ok", "error"])),
            ]
        );
    }

    #[test]
    fn lists_selected_names() {
        let n = selector_names("sum(rate(a_total[1m])) / on () group_left max(b) or vector(0)")
            .unwrap();
        assert_eq!(n, ["a_total", "b"].map(String::from).into());
    }

    #[test]
    fn recording_rules_carry_their_labels() {
        let mut c = checker();
        c.record("job:a:rate1m", "sum by (kind) (rate(a_total[1m]))")
            .unwrap();
        c.check("job:a:rate1m{kind=\"gift\"} > 0").unwrap();
        assert!(c.check("job:a:rate1m{status=\"500\"}").is_err());
    }

    #[test]
    fn reads_rule_files() {
        let yaml = "groups:\n  - name: g\n    rules:\n      - record: a:b\n        expr: sum(x)\n      - alert: A\n        expr: |\n          a\n          > 1\n        for: 1m\n        labels:\n          severity: warning\n";
        let rules = rules_from_yaml(yaml).unwrap();
        assert_eq!(
            rules,
            vec![
                Rule {
                    name: "a:b".into(),
                    is_alert: false,
                    expr: "sum(x)".into()
                },
                Rule {
                    name: "A".into(),
                    is_alert: true,
                    expr: "a\n> 1".into()
                },
            ]
        );
        assert!(rules_from_yaml("      - alert: A\n        expr: >\n          a\n").is_err());
    }
}
