// What a JDBC BI tool (Tableau, Metabase, DBeaver: all on the PostgreSQL JDBC driver) does on connect:
// list schemas, tables (as tables, with remarks), columns, keys, indexes, types and functions, then run
// prepared queries (interval results included, and enough executions for the driver to switch to binary
// transfer). One tab-separated line per finding; a failing call prints "error\t<call>\t<message>".
// Usage: java -cp postgresql.jar BiCatalog.java <jdbc url> <user> <schema> <table>  (password: PGPASSWORD)
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;

public class BiCatalog {
    interface Call { void run() throws SQLException; }

    static void attempt(String name, Call call) {
        try {
            call.run();
            System.out.println("ok\t" + name);
        } catch (SQLException error) {
            System.out.println("error\t" + name + "\t" + error.getMessage().replace('\n', ' '));
        }
    }

    static int count(ResultSet rows) throws SQLException {
        int found = 0;
        while (rows.next()) found++;
        rows.close();
        return found;
    }

    public static void main(String[] args) throws Exception {
        String schema = args[2], table = args[3];
        try (Connection con = DriverManager.getConnection(args[0], args[1], System.getenv("PGPASSWORD"))) {
            DatabaseMetaData meta = con.getMetaData();
            System.out.println("product\t" + meta.getDatabaseProductName() + "\t" + meta.getDatabaseProductVersion());
            attempt("getSchemas", () -> {
                try (ResultSet rows = meta.getSchemas()) {
                    while (rows.next()) System.out.println("schema\t" + rows.getString("TABLE_SCHEM"));
                }
            });
            attempt("getTables", () -> {
                try (ResultSet rows = meta.getTables(null, schema, "%", new String[] {"TABLE"})) {
                    while (rows.next()) {
                        System.out.println("table\t" + rows.getString("TABLE_SCHEM") + "." + rows.getString("TABLE_NAME")
                            + "\t" + rows.getString("TABLE_TYPE") + "\t" + rows.getString("REMARKS"));
                    }
                }
            });
            attempt("getColumns", () -> {
                try (ResultSet rows = meta.getColumns(null, schema, table, "%")) {
                    while (rows.next()) {
                        System.out.println("column\t" + rows.getString("COLUMN_NAME") + "\t" + rows.getString("TYPE_NAME")
                            + "\t" + rows.getString("REMARKS"));
                    }
                }
            });
            attempt("getPrimaryKeys", () -> System.out.println("primary_keys\t" + count(meta.getPrimaryKeys(null, schema, table))));
            attempt("getIndexInfo", () -> System.out.println("indexes\t" + count(meta.getIndexInfo(null, schema, table, false, true))));
            attempt("getImportedKeys", () -> System.out.println("imported_keys\t" + count(meta.getImportedKeys(null, schema, table))));
            attempt("getExportedKeys", () -> System.out.println("exported_keys\t" + count(meta.getExportedKeys(null, schema, table))));
            attempt("getTypeInfo", () -> {
                try (ResultSet rows = meta.getTypeInfo()) {
                    int found = 0;
                    while (rows.next()) {
                        found++;
                        if ("varchar".equals(rows.getString("TYPE_NAME"))) System.out.println("type\tvarchar");
                    }
                    System.out.println("types\t" + found);
                }
            });
            attempt("getFunctions", () -> System.out.println("functions\t" + count(meta.getFunctions(null, "pg_catalog", "%"))));
            attempt("getProcedures", () -> System.out.println("procedures\t" + count(meta.getProcedures(null, schema, "%"))));
            attempt("prepared", () -> {
                String sql = "SELECT count(*) FROM " + schema + "." + table + " WHERE _facility <> ?";
                try (PreparedStatement statement = con.prepareStatement(sql)) {
                    long last = -1;
                    for (int i = 0; i < 7; i++) {  // past prepareThreshold (5): named statements, binary results
                        statement.setString(1, "no such facility");
                        try (ResultSet rows = statement.executeQuery()) {
                            rows.next();
                            last = rows.getLong(1);
                        }
                    }
                    System.out.println("count\t" + last);
                }
            });
            attempt("interval", () -> {
                String sql = "SELECT discharge_ts - admit_ts AS los, admit_ts FROM silver.encounters "
                    + "WHERE discharge_ts IS NOT NULL LIMIT 3";
                try (PreparedStatement statement = con.prepareStatement(sql); ResultSet rows = statement.executeQuery()) {
                    while (rows.next()) System.out.println("interval\t" + rows.getString(1) + "\t" + rows.getTimestamp(2));
                }
            });
        }
    }
}
