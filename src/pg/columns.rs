//! Which column of the target table each entry field is written to.

use std::collections::HashSet;

use super::ident::Ident;

/// The entry fields stored in the table, in the order the insert statement lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Id,
    OccurredAt,
    TenantId,
    Actor,
    Action,
    Resource,
    Outcome,
    Payload,
}

impl Column {
    /// Every column, in statement order.
    pub const ALL: [Column; 8] = [
        Column::Id,
        Column::OccurredAt,
        Column::TenantId,
        Column::Actor,
        Column::Action,
        Column::Resource,
        Column::Outcome,
        Column::Payload,
    ];

    /// The field's name in the JavaScript API, as used in the `columns` option.
    pub fn field_name(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::OccurredAt => "occurredAt",
            Column::TenantId => "tenantId",
            Column::Actor => "actor",
            Column::Action => "action",
            Column::Resource => "resource",
            Column::Outcome => "outcome",
            Column::Payload => "payload",
        }
    }

    /// The column name the default table uses.
    pub fn default_name(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::OccurredAt => "occurred_at",
            Column::TenantId => "tenant_id",
            Column::Actor => "actor",
            Column::Action => "action",
            Column::Resource => "resource",
            Column::Outcome => "outcome",
            Column::Payload => "payload",
        }
    }
}

/// The column name for each field: the default name unless the `columns` option renames it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnMap {
    names: [Ident; 8],
}

impl Default for ColumnMap {
    fn default() -> Self {
        ColumnMap {
            names: Column::ALL.map(|c| Ident::known_valid(c.default_name())),
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
            let Some(col) = Column::ALL.iter().find(|c| c.field_name() == field) else {
                let known: Vec<_> = Column::ALL.iter().map(|c| c.field_name()).collect();
                return Err((
                    field.to_owned(),
                    format!("is not an entry field (one of {})", known.join(", ")),
                ));
            };
            map.names[*col as usize] = Ident::parse(column).map_err(|e| (field.to_owned(), e))?;
        }
        let mut seen = HashSet::new();
        for col in Column::ALL {
            if !seen.insert(map.name(col).as_str()) {
                return Err((
                    col.field_name().to_owned(),
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
    pub fn name(&self, col: Column) -> &Ident {
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
        assert_eq!(m.name(Column::Actor).as_str(), "userId");
        assert_eq!(m.name(Column::OccurredAt).as_str(), "createdAt");
        assert_eq!(m.name(Column::TenantId).as_str(), "tenant_id");
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
