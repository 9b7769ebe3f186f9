//! A map for the few entries one connection holds (its channels, its apps, its presence
//! entries): a vector searched in order. A hash map's smallest table has room for four entries
//! plus control bytes, about 380 bytes for one joined Phoenix channel, and every idle socket
//! carried three of them; this holds what it has. The per-connection channel limit keeps the
//! search short.

pub(crate) struct SmallMap<V>(Vec<(String, V)>);

impl<V> SmallMap<V> {
    pub const fn new() -> SmallMap<V> {
        SmallMap(Vec::new())
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == key)
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        if let Some(at) = self.position(&key) {
            return Some(std::mem::replace(&mut self.0[at].1, value));
        }
        if self.0.len() == self.0.capacity() {
            // One slot for the first entry (a vector's first push would make four), then
            // doubling.
            self.0.reserve_exact(self.0.len().max(1));
        }
        self.0.push((key, value));
        None
    }

    /// The value under `key`, inserted by `make` when there is none.
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let at = match self.position(key) {
            Some(at) => at,
            None => {
                self.insert(key.to_owned(), make());
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let at = self.position(key)?;
        let (_, value) = self.0.swap_remove(at);
        if self.0.is_empty() {
            // A connection that left its channels holds nothing for them.
            self.0 = Vec::new();
        }
        Some(value)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl<'a, V> IntoIterator for &'a SmallMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, V)>,
        fn(&'a (String, V)) -> (&'a String, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::SmallMap;

    #[test]
    fn holds_exactly_what_it_has() {
        let mut map = SmallMap::new();
        assert_eq!(map.insert("a".to_owned(), 1), None);
        assert_eq!(map.0.capacity(), 1);
        assert_eq!(map.insert("b".to_owned(), 2), None);
        assert_eq!(map.insert("a".to_owned(), 3), Some(1));
        *map.get_or_insert_with("c", || 0) += 5;
        *map.get_or_insert_with("c", || 0) += 1;
        assert_eq!(
            (map.get("a"), map.get("c"), map.len()),
            (Some(&3), Some(&6), 3)
        );
        assert!(map.contains_key("b") && !map.contains_key("d"));
        if let Some(b) = map.get_mut("b") {
            *b = 7;
        }
        let mut all: Vec<_> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort();
        assert_eq!(all, [("a".into(), 3), ("b".into(), 7), ("c".into(), 6)]);
        for key in ["a", "b", "c"] {
            assert!(map.remove(key).is_some());
        }
        assert_eq!((map.remove("a"), map.0.capacity()), (None, 0));
    }
}
