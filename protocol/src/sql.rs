//! How the cloud stores enums: as their snake_case names in `text` columns (each column has a
//! CHECK listing the same names), decoded strictly, so a spelling the code does not know is an
//! error at the boundary rather than a silent default.

/// Implements sqlx's `Type`, `Encode` and `Decode` for Postgres `text` on an enum with
/// `fn as_str(self) -> &'static str` and `fn parse(&str) -> Option<Self>`.
#[macro_export]
macro_rules! sql_text_enum {
    ($t:ty) => {
        impl ::sqlx::Type<::sqlx::Postgres> for $t {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl ::sqlx::Encode<'_, ::sqlx::Postgres> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> ::std::result::Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<::sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $t {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> ::std::result::Result<Self, ::sqlx::error::BoxDynError> {
                let s = <&str as ::sqlx::Decode<::sqlx::Postgres>>::decode(value)?;
                <$t>::parse(s)
                    .ok_or_else(|| format!(concat!("unknown ", stringify!($t), " {:?}"), s).into())
            }
        }
    };
}

sql_text_enum!(crate::CreditType);
