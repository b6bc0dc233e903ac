//! Which column of the target table each entry field is written to.

use std::collections::HashSet;

use super::ident::Ident;

use crate::fields::Field;

/// The column name for each field: the default name unless the `columns` option renames it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnMap {
    names: [Ident; 8],
}

impl Default for ColumnMap {
    fn default() -> Self {
        ColumnMap {
            names: Field::ALL.map(|c| Ident::known_valid(c.default_column())),
        }
    }
}

impl ColumnMap {
    /// Applies renames given as `(field name, column name)` pairs. The error names the field at fault:
    /// an unknown field, an invalid column name, or two fields sent to one column.
    pub fn with_renames<'a>(
        renames: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ColumnMap, (String, String)> {
        let mut map = ColumnMap::default();
        for (field, column) in renames {
            let Some(col) = Field::from_js_name(field) else {
                let known: Vec<_> = Field::ALL.iter().map(|c| c.js_name()).collect();
                return Err((
                    field.to_owned(),
                    format!("is not an entry field (one of {})", known.join(", ")),
                ));
            };
            map.names[col as usize] = Ident::parse(column).map_err(|e| (field.to_owned(), e))?;
        }
        let mut seen = HashSet::new();
        for col in Field::ALL {
            if !seen.insert(map.name(col).as_str()) {
                return Err((
                    col.js_name().to_owned(),
                    format!(
                        "maps to column {} which another field already uses",
                        map.name(col)
                    ),
                ));
            }
        }
        Ok(map)
    }

    /// The column a field is written to.
    pub fn name(&self, col: Field) -> &Ident {
        &self.names[col as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_apply_and_the_rest_keep_their_defaults() {
        let m =
            ColumnMap::with_renames([("actor", "userId"), ("occurredAt", "createdAt")]).unwrap();
        assert_eq!(m.name(Field::Actor).as_str(), "userId");
        assert_eq!(m.name(Field::OccurredAt).as_str(), "createdAt");
        assert_eq!(m.name(Field::TenantId).as_str(), "tenant_id");
    }

    #[test]
    fn bad_renames_name_the_field() {
        assert_eq!(
            ColumnMap::with_renames([("user", "x")]).unwrap_err().0,
            "user"
        );
        assert_eq!(
            ColumnMap::with_renames([("actor", "a;b")]).unwrap_err().0,
            "actor"
        );
        let (field, why) = ColumnMap::with_renames([("actor", "action")]).unwrap_err();
        assert_eq!(field, "action");
        assert!(why.contains("another field"), "{why}");
    }
}
