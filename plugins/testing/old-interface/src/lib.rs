//! Test plugin `old-interface`: the exports of a 0.1 plugin (`weir:policy/plugin@0.1.0`,
//! `weir:policy/allocator@0.1.0`, reduced to what naming the version needs). A 0.2 host must
//! refuse it with the version it found and the one it needs, not as an unknown world.

wit_bindgen::generate!({
    inline: "
        package weir:policy@0.1.0;

        interface plugin {
            configure: func(config: list<tuple<string, string>>) -> result<_, string>;
        }

        interface allocator {
            assign-address: func(taken: list<string>) -> option<string>;
        }

        world allocator-plugin {
            export plugin;
            export allocator;
        }
    ",
});

struct Old;

impl exports::weir::policy::plugin::Guest for Old {
    fn configure(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
}

impl exports::weir::policy::allocator::Guest for Old {
    fn assign_address(_taken: Vec<String>) -> Option<String> {
        None
    }
}

export!(Old);
