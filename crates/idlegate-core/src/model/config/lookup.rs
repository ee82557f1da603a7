//! A profile asked for by name, the same way wherever a name is given (a `--profile` flag, a
//! config's `profile = "…"`): [`find_profile`] returns the profile or an [`UnknownProfile`]
//! whose [`UnknownProfile::hint`] lists every real name and, for a close one (a typo, a long
//! form such as `aws-nat-gateway` for `aws-natgw`), says which was meant.

use crate::model::profile::{self, Profile};

/// A name that is no profile's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no such profile")]
pub struct UnknownProfile {
    pub name: String,
}

/// The profile called `name`, or why there is none.
pub fn find_profile(name: &str) -> Result<&'static Profile, UnknownProfile> {
    profile::find(name).ok_or_else(|| UnknownProfile {
        name: name.to_string(),
    })
}

impl UnknownProfile {
    /// The profiles close to the name asked for, closest first (at most three).
    pub fn close_names(&self) -> Vec<&'static str> {
        let asked = squash(&self.name);
        let mut close: Vec<(usize, &'static str)> = profile::ALL
            .iter()
            .map(|p| (p.name, squash(p.name)))
            .filter(|(_, real)| is_close(&asked, real))
            .map(|(name, real)| (distance(&asked, &real), name))
            .collect();
        close.sort();
        // The same letters in another case or spacing: that one only.
        let most = if close.first().is_some_and(|(d, _)| *d == 0) {
            1
        } else {
            3
        };
        close.into_iter().take(most).map(|(_, name)| name).collect()
    }

    /// What to type instead: the close names, if any, and every profile's name.
    pub fn hint(&self) -> String {
        let all: Vec<&str> = profile::ALL.iter().map(|p| p.name).collect();
        let all = all.join(", ");
        match self.close_names()[..] {
            [] => format!("the profiles are {all} (`idlegate profiles` shows their timers)"),
            [one] => format!(
                "did you mean {one}? The profiles are {all} (`idlegate profiles` shows their timers)"
            ),
            [ref first @ .., last] => format!(
                "did you mean {} or {last}? The profiles are {all} (`idlegate profiles` shows their \
                 timers)",
                first.join(", ")
            ),
        }
    }
}

/// The name in lower case without its dashes and spaces: `AWS NAT-Gateway` → `awsnatgateway`.
fn squash(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A typo (edit distance at most 2, or a third of the name), or one name an abbreviation of
/// the other (its letters in order: `awsnatgw` in `awsnatgateway`).
fn is_close(asked: &str, real: &str) -> bool {
    if asked.len() < 3 {
        return false;
    }
    distance(asked, real) <= (real.len() / 3).max(2)
        || (asked.len() >= 4 && (subsequence(asked, real) || subsequence(real, asked)))
}

/// Whether `short`'s letters appear in `long` in order.
fn subsequence(short: &str, long: &str) -> bool {
    let mut long = long.chars();
    short.chars().all(|c| long.any(|l| l == c))
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(name: &str) -> Vec<&'static str> {
        find_profile(name).unwrap_err().close_names()
    }

    #[test]
    fn a_real_name_is_found() {
        assert_eq!(find_profile("aws-natgw").unwrap().name, "aws-natgw");
    }

    #[test]
    fn the_long_form_of_a_name_suggests_the_real_one() {
        assert_eq!(close("aws-nat-gateway"), ["aws-natgw"]);
        assert_eq!(close("conntrack"), ["linux-conntrack"]);
    }

    #[test]
    fn a_typo_suggests_the_name_it_misspells() {
        assert_eq!(close("azure-bl")[0], "azure-lb");
        assert_eq!(close("AWS-NLB"), ["aws-nlb"]);
    }

    #[test]
    fn a_name_like_none_suggests_nothing_and_lists_every_profile() {
        let unknown = find_profile("nope").unwrap_err();
        assert!(unknown.close_names().is_empty());
        let hint = unknown.hint();
        assert!(hint.starts_with("the profiles are azure-lb, "), "{hint}");
        for p in profile::ALL {
            assert!(hint.contains(p.name), "{hint}");
        }
    }

    #[test]
    fn the_hint_says_did_you_mean_before_the_list() {
        let hint = find_profile("aws-nat-gateway").unwrap_err().hint();
        assert!(
            hint.starts_with("did you mean aws-natgw? The profiles are azure-lb, "),
            "{hint}"
        );
    }
}
