//! The stable text of a closed enum, both ways: shown with `Display`, parsed
//! back with `FromStr` against the enum's `ALL`, with an error type of its own.

/// For an enum with `const ALL: &[Self]` and a method giving each variant's
/// stable text (`as_str`, or `code` for a stop reason), implements `Display`
/// (the text) and `FromStr` (the variant whose text it is), and defines the
/// parse error `$error` (the rejected text), whose message says the text "is not
/// $what".
macro_rules! stable_text {
    ($type:ident, $text:ident, $error:ident, $what:literal) => {
        impl ::std::fmt::Display for $type {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.$text())
            }
        }

        #[doc = concat!("A text that is not one of [`", stringify!($type), "`]'s.")]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $error(pub String);

        impl ::std::fmt::Display for $error {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{:?} is not {}", self.0, $what)
            }
        }

        impl ::std::error::Error for $error {}

        impl ::std::str::FromStr for $type {
            type Err = $error;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                $type::ALL
                    .iter()
                    .copied()
                    .find(|value| value.$text() == text)
                    .ok_or_else(|| $error(text.to_string()))
            }
        }
    };
}

pub(crate) use stable_text;
