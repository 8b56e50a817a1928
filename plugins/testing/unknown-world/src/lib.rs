//! Test plugin `unknown-world`: a well-formed component of a world Weir does not know
//! (`test:other/other`), which the host must refuse to load as a policy plugin.

wit_bindgen::generate!({
    inline: "
        package test:other;

        world other {
            export run: func() -> u32;
        }
    ",
});

struct Other;

impl Guest for Other {
    fn run() -> u32 {
        42
    }
}

export!(Other);
