"""The registry: one definition per kind of object the cluster stores.

Each :class:`Kind` says everything the cluster needs to know about one resource, in one place:
its names (table, request body key, schema id, ``arvados#`` kind, UUID type code), its API
attributes (type, default, who may write them), its database columns as Arvados' filters see
them (column types, in ``db/structure.sql`` order), which columns filters may not search, which
names are ``varchar(255)``, which columns the store indexes, and whether names are unique per
owner. The modules that used to keep their own copies now derive from it:

* :mod:`schema` (attribute tables, hence request validation and the discovery document),
* :mod:`filters` (column types and searchable columns of list filters),
* :mod:`uuids` (kinds and UUID type codes), :mod:`validation` (name lengths),
* :mod:`indexes` (what the store indexes and the list planner may use),
* :mod:`api` (request body keys, unique names).

API methods and their parameters stay in :mod:`schema`, the one place routes are described.
Data only: this module imports nothing from the cluster, so every module can import it.

Attribute tables are ``name type default flags`` (see :mod:`schema`); column lists are
``name:letter`` with i=integer s=string t=text d=datetime b=boolean f=float j=jsonb. Serialized
columns (command, mounts, environment, ...) are *text* in Arvados: they can be matched as JSON
text, but are not jsonb, so subproperty/contains filters on them are invalid, as on a real cluster.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Column type letters of :attr:`Kind.columns`.
COLUMN_TYPE_LETTERS = {"i": "integer", "s": "string", "t": "text", "d": "datetime", "b": "boolean",
                       "f": "float", "j": "jsonb"}


@dataclass(frozen=True)
class Kind:
    """One resource kind: see the module docstring for what each part feeds."""

    table: str                    # "container_requests": routes, the store's table
    singular: str                 # "container_request": the request body key
    model: str                    # "ContainerRequest": schema id, error messages
    kind: str | None              # "arvados#containerRequest"; None: nothing is stored
    uuid_code: str | None         # "xvhdp": the type code inside its UUIDs
    description: str              # for the discovery document
    attributes: str = ""          # API attributes beyond the common ones (schema's table format)
    columns: str = ""             # database columns, as list filters type them
    not_searchable: tuple[str, ...] = ()   # columns Arvados refuses to filter on
    not_full_text: tuple[str, ...] = ()    # columns left out of ["any", "like", "%...%"]
    name_columns: tuple[str, ...] = ()     # varchar(255) columns: longer values are refused
    indexed: tuple[str, ...] = ()          # columns the store indexes: string columns by value,
                                           # jsonb ones by string property (lookups, lists)
    unique_names: bool = False             # names unique per owner (ensure_unique_name)

    def column_types(self) -> dict[str, str]:
        """Column name -> "integer"|"string"|"text"|"datetime"|"boolean"|"float"|"jsonb"."""
        out: dict[str, str] = {}
        for word in self.columns.split():
            name, _, letter = word.partition(":")
            out[name] = COLUMN_TYPE_LETTERS[letter]
        return out


_KINDS: tuple[Kind, ...] = (
    Kind("api_client_authorizations", "api_client_authorization", "ApiClientAuthorization",
         "arvados#apiClientAuthorization", "gj3su",
         "API tokens: each lets its owner's clients act as that user, within its scopes.",
         attributes="""
        api_token                 string    null      c
        created_by_ip_address     string    null      -
        last_used_by_ip_address   string    null      -
        last_used_at              datetime  null      -
        expires_at                datetime  null      w
        scopes                    Array     ["all"]   w
        """,
         columns="""
        id:i api_token:s created_by_ip_address:s last_used_by_ip_address:s last_used_at:d
        expires_at:d created_at:d updated_at:d default_owner_uuid:s scopes:t uuid:s refreshes_at:d
        """),
    Kind("authorized_keys", "authorized_key", "AuthorizedKey",
         "arvados#authorizedKey", "fngyi",
         "Public keys users log in to virtual machines with.",
         attributes="""
        name                      string    null      w
        key_type                  string    "SSH"     w
        authorized_user_uuid      string    null      w
        public_key                text      null      w
        expires_at                datetime  null      w
        """,
         columns="""
        id:i uuid:s owner_uuid:s modified_by_user_uuid:s modified_at:d name:s key_type:s
        authorized_user_uuid:s public_key:t expires_at:d created_at:d updated_at:d
        """),
    Kind("collections", "collection", "Collection",
         "arvados#collection", "4zz18",
         "Sets of files stored in Keep, described by a manifest.",
         attributes="""
        name                      string    null      w
        description               string    null      w
        properties                Hash      {}        w
        portable_data_hash        string    "d41d8cd98f00b204e9800998ecf8427e+0"  w
        manifest_text             text      ""        w
        replication_desired       integer   null      w
        replication_confirmed     integer   null      -
        replication_confirmed_at  datetime  null      -
        storage_classes_desired   Array     ["default"]  w
        storage_classes_confirmed Array     []        -
        storage_classes_confirmed_at datetime null    -
        trash_at                  datetime  null      w
        delete_at                 datetime  null      w
        is_trashed                boolean   false     w
        current_version_uuid      string    null      -
        version                   integer   1         -
        preserve_version          boolean   false     w
        file_count                integer   0         -
        file_size_total           integer   0         -
        """,
         columns="""
        id:i owner_uuid:s created_at:d modified_by_user_uuid:s modified_at:d portable_data_hash:s
        replication_desired:i replication_confirmed_at:d replication_confirmed:i updated_at:d uuid:s
        manifest_text:t name:s description:s properties:j delete_at:d file_names:t trash_at:d
        is_trashed:b storage_classes_desired:j storage_classes_confirmed:j
        storage_classes_confirmed_at:d current_version_uuid:s version:i preserve_version:b
        file_count:i file_size_total:i
        """,
         not_searchable=("manifest_text",),
         not_full_text=("current_version_uuid", "manifest_text", "storage_classes_confirmed",
                        "storage_classes_desired"),
         name_columns=("name",),
         indexed=("owner_uuid", "portable_data_hash", "properties"),
         unique_names=True),
    Kind("container_requests", "container_request", "ContainerRequest",
         "arvados#containerRequest", "xvhdp",
         "Requests for work: what to run and with which resources; fulfilled by containers.",
         attributes="""
        name                      string    null      w
        description               text      null      w
        properties                Hash      {}        w
        state                     string    "Uncommitted"  w
        requesting_container_uuid string    null      -
        container_uuid            string    null      -
        container_count_max       integer   null      w
        mounts                    Hash      {}        w
        secret_mounts             Hash      {}        ws
        runtime_token             string    null      ws
        runtime_constraints       Hash      {}        w
        scheduling_parameters     Hash      {}        w
        container_image           string    null      w
        environment               Hash      {}        w
        cwd                       string    null      w
        command                   Array     []        w
        output_path               string    null      w
        output_glob               Array     []        w
        output_name               string    null      w
        output_ttl                integer   0         w
        output_storage_classes    Array     ["default"]  w
        output_properties         Hash      {}        w
        priority                  integer   0         w
        expires_at                datetime  null      w
        filters                   text      null      w
        container_count           integer   0         -
        use_existing              boolean   true      w
        output_uuid               string    null      -
        log_uuid                  string    null      -
        cumulative_cost           float     0.0       -
        service                   boolean   false     w
        published_ports           Hash      {}        w
        """,
         columns="""
        id:i uuid:s owner_uuid:s created_at:d modified_at:d modified_by_user_uuid:s name:s
        description:t properties:j state:s requesting_container_uuid:s container_uuid:s
        container_count_max:i mounts:t runtime_constraints:t container_image:s environment:t cwd:s
        command:t output_path:s priority:i expires_at:d filters:t updated_at:d container_count:i
        use_existing:b scheduling_parameters:t output_uuid:s log_uuid:s output_name:s output_ttl:i
        secret_mounts:j runtime_token:t output_storage_classes:j output_properties:j
        cumulative_cost:f output_glob:t service:b published_ports:j
        """,
         not_full_text=("mounts", "output_glob", "output_storage_classes", "published_ports",
                        "runtime_token", "secret_mounts", "secret_mounts_md5", "service"),
         name_columns=("name", "output_name"),
         indexed=("owner_uuid", "state", "container_uuid", "requesting_container_uuid",
                  "properties")),
    Kind("containers", "container", "Container",
         "arvados#container", "dz642",
         "Units of work the dispatcher runs; one may satisfy several identical requests.",
         attributes="""
        state                     string    "Queued"  w
        started_at                datetime  null      -
        finished_at               datetime  null      -
        log                       string    null      w
        environment               Hash      {}        c
        cwd                       string    null      c
        command                   Array     []        c
        output_path               string    null      c
        output_glob               Array     []        c
        mounts                    Hash      {}        c
        secret_mounts             Hash      {}        cs
        runtime_token             string    null      cs
        runtime_constraints       Hash      {}        c
        scheduling_parameters     Hash      {}        c
        runtime_status            Hash      {}        w
        output                    string    null      w
        container_image           string    null      c
        progress                  float     null      w
        priority                  integer   0         w
        exit_code                 integer   null      w
        auth_uuid                 string    null      -
        locked_by_uuid            string    null      -
        runtime_user_uuid         text      null      c
        runtime_auth_scopes       Array     null      c
        lock_count                integer   0         -
        gateway_address           string    null      w
        interactive_session_started boolean false     w
        output_storage_classes    Array     ["default"]  c
        output_properties         Hash      {}        w
        cost                      float     0.0       w
        subrequests_cost          float     0.0       w
        service                   boolean   false     c
        published_ports           jsonb     {}        c
        """,
         columns="""
        id:i uuid:s owner_uuid:s created_at:d modified_at:d modified_by_user_uuid:s state:s
        started_at:d finished_at:d log:s environment:t cwd:s command:t output_path:s mounts:t
        runtime_constraints:t output:s container_image:s progress:f priority:i updated_at:d
        exit_code:i auth_uuid:s locked_by_uuid:s scheduling_parameters:t secret_mounts:j
        secret_mounts_md5:s runtime_status:j runtime_user_uuid:t runtime_auth_scopes:j
        runtime_token:t lock_count:i gateway_address:s interactive_session_started:b
        output_storage_classes:j output_properties:j cost:f subrequests_cost:f output_glob:t
        service:b published_ports:j
        """,
         not_searchable=("gateway_address", "output_storage_classes", "runtime_token",
                         "secret_mounts_md5"),
         not_full_text=("gateway_address", "output_storage_classes", "runtime_token",
                        "secret_mounts", "secret_mounts_md5"),
         indexed=("state",)),
    Kind("groups", "group", "Group",
         "arvados#group", "j7d0g",
         "Projects, roles and filter groups.",
         attributes="""
        name                      string    null      w
        description               string    null      w
        group_class               string    null      w
        properties                Hash      {}        w
        trash_at                  datetime  null      w
        delete_at                 datetime  null      w
        is_trashed                boolean   false     w
        frozen_by_uuid            string    null      w
        can_write                 boolean   null      -v
        can_manage                boolean   null      -v
        """,
         columns="""
        id:i uuid:s owner_uuid:s created_at:d modified_by_user_uuid:s modified_at:d name:s
        description:s updated_at:d group_class:s trash_at:d is_trashed:b delete_at:d properties:j
        frozen_by_uuid:s
        """,
         not_full_text=("frozen_by_uuid",),
         name_columns=("name",),
         indexed=("owner_uuid",),
         unique_names=True),
    Kind("keep_services", "keep_service", "KeepService",
         "arvados#keepService", "bi6l4",
         "Keep storage servers clients read and write blocks through.",
         attributes="""
        service_host              string    null      w
        service_port              integer   null      w
        service_ssl_flag          boolean   false     w
        service_type              string    "disk"    w
        read_only                 boolean   false     w
        """,
         columns="""
        id:i uuid:s owner_uuid:s modified_by_user_uuid:s modified_at:d service_host:s service_port:i
        service_ssl_flag:b service_type:s created_at:d updated_at:d read_only:b
        """),
    Kind("links", "link", "Link",
         "arvados#link", "o0j2j",
         "Typed relations between objects: permissions, tags, names.",
         attributes="""
        tail_uuid                 string    null      w
        link_class                string    null      w
        name                      string    null      w
        head_uuid                 string    null      w
        properties                Hash      {}        w
        """,
         columns="""
        id:i uuid:s owner_uuid:s created_at:d modified_by_user_uuid:s modified_at:d tail_uuid:s
        link_class:s name:s head_uuid:s properties:j updated_at:d
        """,
         name_columns=("name",),
         indexed=("head_uuid", "tail_uuid", "name")),
    Kind("logs", "log", "Log",
         "arvados#log", "57u5n",
         "Event records: every change to an object, and messages from services.",
         attributes="""
        id                        integer   null      -
        object_uuid               string    null      w
        object_owner_uuid         string    null      -
        event_at                  datetime  null      w
        event_type                string    null      w
        summary                   text      null      w
        properties                Hash      {}        w
        """,
         columns="""
        id:i uuid:s owner_uuid:s modified_by_user_uuid:s object_uuid:s event_at:d event_type:s
        summary:t properties:t created_at:d updated_at:d modified_at:d object_owner_uuid:s
        """,
         indexed=("object_uuid",)),
    Kind("users", "user", "User",
         "arvados#user", "tpzed",
         "People (and the system user) that can act on the cluster.",
         attributes="""
        email                     string    null      w
        username                  string    null      w
        first_name                string    null      w
        last_name                 string    null      w
        identity_url              string    null      w
        is_admin                  boolean   false     w
        is_active                 boolean   false     w
        prefs                     Hash      {}        w
        """,
         columns="""
        id:i uuid:s owner_uuid:s created_at:d modified_by_user_uuid:s modified_at:d email:s
        first_name:s last_name:s identity_url:s is_admin:b prefs:t updated_at:d default_owner_uuid:s
        is_active:b username:s redirect_to_user_uuid:s
        """,
         name_columns=("first_name", "last_name", "username")),
    Kind("virtual_machines", "virtual_machine", "VirtualMachine",
         "arvados#virtualMachine", "2x53u",
         "Shell nodes users can log in to.",
         attributes="""
        hostname                  string    null      w
        """,
         columns="""
        id:i uuid:s owner_uuid:s modified_by_user_uuid:s modified_at:d hostname:s created_at:d
        updated_at:d
        """),
    Kind("workflows", "workflow", "Workflow",
         "arvados#workflow", "7fd4e",
         "Registered workflow definitions users can run.",
         attributes="""
        name                      string    null      w
        description               text      null      w
        definition                text      null      w
        collection_uuid           string    null      w
        """,
         columns="""
        id:i uuid:s owner_uuid:s created_at:d modified_at:d modified_by_user_uuid:s name:s
        description:t definition:t updated_at:d collection_uuid:s
        """,
         not_full_text=("collection_uuid", "definition"),
         name_columns=("name",),
         indexed=("owner_uuid",)),
    Kind("user_agreements", "user_agreement", "UserAgreement",
         None, None,
         "Terms users must sign before using the cluster (none here).",
         attributes=""),

)

#: table -> its Kind, in the order responses, schemas and tables are listed.
KINDS: dict[str, Kind] = {k.table: k for k in _KINDS}


def kind_of(table: str) -> Kind | None:
    """The registry entry of ``table`` (None for computed endpoints such as ``configs``)."""
    return KINDS.get(table)
