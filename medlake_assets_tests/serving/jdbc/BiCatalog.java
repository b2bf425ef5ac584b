// What a JDBC BI tool (Tableau, Metabase, DBeaver: all on the PostgreSQL JDBC driver) does on connect:
// list schemas, tables and views, a table's columns, then run a prepared query. One line per finding.
// Usage: java -cp postgresql.jar BiCatalog.java <jdbc url> <user> <schema> <table>  (password: PGPASSWORD)
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;

public class BiCatalog {
    public static void main(String[] args) throws Exception {
        String schema = args[2], table = args[3];
        try (Connection con = DriverManager.getConnection(args[0], args[1], System.getenv("PGPASSWORD"))) {
            DatabaseMetaData meta = con.getMetaData();
            System.out.println("product\t" + meta.getDatabaseProductName() + "\t" + meta.getDatabaseProductVersion());
            try (ResultSet rows = meta.getSchemas()) {
                while (rows.next()) System.out.println("schema\t" + rows.getString("TABLE_SCHEM"));
            }
            try (ResultSet rows = meta.getTables(null, schema, "%", new String[] {"TABLE", "VIEW"})) {
                while (rows.next()) {
                    System.out.println("table\t" + rows.getString("TABLE_SCHEM") + "." + rows.getString("TABLE_NAME")
                        + "\t" + rows.getString("TABLE_TYPE"));
                }
            }
            try (ResultSet rows = meta.getColumns(null, schema, table, "%")) {
                while (rows.next()) {
                    System.out.println("column\t" + rows.getString("COLUMN_NAME") + "\t" + rows.getString("TYPE_NAME"));
                }
            }
            String sql = "SELECT count(*) FROM " + schema + "." + table + " WHERE _facility <> ?";
            try (PreparedStatement statement = con.prepareStatement(sql)) {
                statement.setString(1, "no such facility");
                try (ResultSet rows = statement.executeQuery()) {
                    rows.next();
                    System.out.println("count\t" + rows.getLong(1));
                }
            }
        }
    }
}
